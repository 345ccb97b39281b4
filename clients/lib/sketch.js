// Runs a composer's p5.js sketch in its own layer. A sketch module's default export is an
// instance-mode function `(p, tutti) => { p.setup = ...; p.draw = ... }`; `tutti` gives the synced
// score time, parameters and sections. A sketch that fails shows its error in its own layer and
// stops; every other layer goes on.

import { areaOf, sectionAt } from "./score-view.js";

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

export async function mountSketch(container, layer, conductor, part) {
  const box = areaOf(layer, container.clientWidth, container.clientHeight);
  const holder = document.createElement("div");
  holder.className = "sketch-layer";
  Object.assign(holder.style, { left: `${box.x}px`, top: `${box.y}px`, width: `${box.w}px`, height: `${box.h}px` });
  container.append(holder);
  const state = { error: null, instance: null };
  const fail = (err) => {
    state.error = String(err?.message ?? err);
    state.instance?.noLoop();
    const note = document.createElement("div");
    note.className = "sketch-error";
    note.textContent = `sketch ${layer.src}: ${state.error}`;
    holder.append(note);
    console.error(`sketch ${layer.src}`, err);
  };
  try {
    const module = await import(`/score-files/${layer.src}`);
    const api = sketchApi(conductor, part, box);
    state.instance = new p5((p) => {
      module.default(p, api);
      for (const hook of ["setup", "draw"]) {
        const fn = p[hook];
        if (!fn) continue;
        p[hook] = () => {
          if (state.error) return;
          try {
            fn.call(p);
          } catch (err) {
            fail(err);
          }
        };
      }
    }, holder);
  } catch (err) {
    fail(err);
  }
  return state;
}
