// Runs a composer's p5.js sketch in its own layer. A sketch module's default export is an
// instance-mode function `(p, tutti) => { p.setup = ...; p.draw = ... }`; `tutti` gives the synced
// score time, parameters and sections, and the layer's size (`width`, `height`, which follow
// resizes and rotation: the sketch's canvas is resized with its layer). A sketch that fails, in
// any of its functions or touch handlers, shows its error in a line inside its own layer, stops,
// and is reported to the conductor's console; every other layer goes on.

import { sectionAt } from "./score-view.js";

export function sketchApi(conductor, part, box) {
  return {
    part,
    score: conductor.score,
    width: box.w,
    height: box.h,
    time: () => conductor.position(), // score seconds now
    now: () => conductor.now(), // conductor time now
    param: (name) => conductor.param(name),
    section: () => sectionAt(conductor.score, conductor.position()),
    playing: () => conductor.playing(),
  };
}

// Every p5 function a sketch may define that p5 calls: an error in any of them stays in the layer.
const HOOKS = [
  "preload", "setup", "draw", "windowResized",
  "touchStarted", "touchMoved", "touchEnded",
  "mousePressed", "mouseReleased", "mouseClicked", "doubleClicked", "mouseMoved", "mouseDragged", "mouseWheel",
  "keyPressed", "keyReleased", "keyTyped", "deviceMoved", "deviceTurned", "deviceShaken",
];

// `boxOf()` gives the layer's box in the container's pixels, now: called again on every resize.
export async function mountSketch(container, layer, conductor, part, boxOf) {
  const holder = document.createElement("div");
  holder.className = "sketch-layer";
  holder.dataset.src = layer.src;
  container.append(holder);
  let box = boxOf();
  const place = () => Object.assign(holder.style, { left: `${box.x}px`, top: `${box.y}px`, width: `${box.w}px`, height: `${box.h}px` });
  place();
  const api = sketchApi(conductor, part, box);
  const state = { error: null, instance: null, holder, api };
  const fail = (err) => {
    if (state.error) return;
    state.error = String(err?.message ?? err);
    try {
      state.instance?.noLoop();
    } catch {
      // a sketch that failed in setup may have no loop to stop
    }
    const note = document.createElement("div");
    note.className = "sketch-error";
    note.textContent = `The sketch ${layer.src} stopped: ${state.error}`;
    holder.append(note);
    console.error(`sketch ${layer.src}`, err);
    conductor.problem(`sketch ${layer.src}`, state.error);
  };
  // Errors thrown from a sketch's own listeners or timers reach only the window.
  window.addEventListener("error", (event) => {
    if (String(event.filename).includes(`/score-files/${layer.src}`)) {
      event.preventDefault();
      fail(event.error ?? event.message);
    }
  });
  const resize = () => {
    const next = boxOf();
    if (next.w === box.w && next.h === box.h && next.x === box.x && next.y === box.y) return;
    box = next;
    place();
    Object.assign(api, { width: box.w, height: box.h });
    const p = state.instance;
    if (!p || state.error) return;
    try {
      if (p._setupDone && p.canvas) p.resizeCanvas(Math.max(1, Math.round(box.w)), Math.max(1, Math.round(box.h)));
    } catch (err) {
      fail(err);
    }
  };
  new ResizeObserver(resize).observe(container);
  try {
    const module = await import(`/score-files/${layer.src}`);
    state.instance = new p5((p) => {
      try {
        module.default(p, api);
      } catch (err) {
        fail(err);
        return;
      }
      for (const hook of HOOKS) {
        const fn = p[hook];
        if (typeof fn !== "function") continue;
        p[hook] = (...args) => {
          if (state.error) return false;
          try {
            return fn.apply(p, args);
          } catch (err) {
            fail(err);
            return false;
          }
        };
      }
    }, holder);
  } catch (err) {
    fail(err);
  }
  return state;
}
