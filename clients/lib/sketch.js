// Runs a composer's p5.js sketch in its own layer, in one of two ways:
// - a module sketch: the default export is an instance-mode function `(p, tutti) => { p.setup = ...;
//   p.draw = ... }`, run in the page (mountSketch);
// - a global-mode sketch (the layer names `p5: "1.x"` or `"2.x"`): `function setup()`, `draw()` and
//   the rest as openprocessing.org exports them, run unchanged in a sandboxed frame of its own sized
//   to the layer, with `tutti` and a socket.io-style `io()` as globals (mountFrame).
// `tutti` gives the synced score time, parameters and sections, the layer's size (`width`, `height`,
// which follow resizes and rotation) and events to and from the other parts' sketches (`send`, `on`).
// A sketch that fails shows its error in a line inside its own layer, stops, and is reported to the
// conductor's console; every other layer goes on.

import { sectionAt } from "./score-view.js";

const SPIN = 0.012; // seconds of a timed event's wait spun rather than left to a timer, which can be late

// An event from another part's sketch, fired at its conductor time `t` (a timed one) or at once.
export function deliver(event, now, fire) {
  const meta = { from: event.part, sender: event.sender, at: event.at ?? null, late: 0 };
  if (event.t == null) return fire(event, meta);
  const go = () => {
    let left = event.t - now();
    if (left > SPIN) return setTimeout(go, (left - SPIN) * 1000);
    while ((left = event.t - now()) > 0); // the last few milliseconds, to the synced clock
    fire(event, { ...meta, late: -left });
  };
  go();
}

// What a sketch frame needs of the page's clock estimate to read the same synced clock.
function clockModel(clock) {
  return { _from: clock._from, _to: clock._to, _since: clock._since, _steered: true, maxSlew: clock.maxSlew };
}

// `signal` ends the sketch's `on` listeners (when a live edit replaces it).
export function sketchApi(conductor, part, box, signal) {
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
    send: (name, data = null, { to, at } = {}) => conductor.sketchEvent({ name, data, to, at }),
    on: (name, fn) =>
      conductor.addEventListener(
        "sketch",
        ({ detail }) => {
          if (detail.name === name) deliver(detail, () => conductor.now(), (e, meta) => fn(e.data, meta));
        },
        { signal },
      ),
  };
}

const P5 = { "1.x": "/vendor/p5/p5.min.js", "2.x": "/vendor/p5-2/p5.min.js" };
const ACORN = "/vendor/acorn/acorn.js";

// Whether a script can be written inside a <script> element: nothing in it would end the element
// early, or keep it from ending (HTML's escaped script data).
export const inlinable = (text) => !/<\/script|<!--[\s\S]*<script[\s/>]/i.test(text);

// A sandboxed frame has an opaque origin, and the browser keeps no cache for it: every frame would
// download p5 (1 MB) and compile it anew. So the page fetches each library once, through its own
// cache, and writes it into the frames' documents, where the compiled code is shared too.
const libraries = new Map(); // url -> promise of its text, or null where it cannot be inlined
function library(url) {
  if (!libraries.has(url)) {
    const text = fetch(url)
      .then((r) => (r.ok ? r.text() : null))
      .then((t) => (t !== null && inlinable(t) ? t : null))
      .catch(() => null);
    libraries.set(url, text);
  }
  return libraries.get(url);
}

// A library's element in a frame's document: inline where it can be, loaded from its url otherwise
// (`crossorigin`: a sketch's errors pass through p5's code, and the browser would hide their message,
// "Script error.", behind a script loaded without CORS).
async function scriptElement(url) {
  const text = await library(url);
  return text === null ? `<script src="${url}" crossorigin></script>` : `<script>${text}</script>`;
}

// The frame's document: its start (state, clock, score) as JSON, then acorn, sketch-boot.js,
// sketch-frame.js and p5, loaded and compiled once the frame is made. The sketch itself comes later,
// in a message ("run"): a frame can wait, warm, for the next version of its layer's sketch.
async function frameDocument(layer, conductor, part) {
  const [acorn, p5] = await Promise.all([scriptElement(ACORN), scriptElement(P5[layer.p5])]);
  const memory = globalThis.tuttiSketchMemory ?? null; // bytes; a test sets a small limit
  const init = { part, score: conductor.score, memory, state: conductor.state, clock: clockModel(conductor.clock) };
  const json = JSON.stringify(init).replaceAll("<", "\\u003c"); // no "</script>" inside the script
  return `<!doctype html><html><head><meta charset="utf-8">
<style>html, body { margin: 0; overflow: hidden; background: transparent; } canvas { display: block; }</style>
<script type="application/json" id="tutti-init">${json}</script>
${acorn}
<script src="/clients/sketch-boot.js" crossorigin></script>
<script type="module" src="/clients/sketch-frame.js"></script>
${p5}
</head><body></body></html>`;
}

// A global-mode sketch's frame, made ahead of its sketch: p5 loads in it, unseen, and `state.warm`
// resolves once it waits for a sketch. `state.run(layer, source, version)` then runs one in it: the frame
// is shown (and `state.shown` resolves) once the sketch has drawn, or has failed. The frame is
// sandboxed (an opaque origin): its globals, its canvas (of any size) and its errors stay inside it,
// and without `allow-same-origin` it cannot reach the page, the token or the socket.
export function prepareFrame(container, layer, conductor, part, boxOf) {
  const frame = document.createElement("iframe");
  frame.className = "sketch-layer sketch-frame";
  frame.dataset.src = layer.src;
  frame.dataset.waiting = ""; // unseen until its sketch has drawn
  frame.sandbox = "allow-scripts";
  frame.allow = "accelerometer; gyroscope; magnetometer"; // deviceMoved and deviceTurned on an iPad
  frame.title = `sketch ${layer.src}`;
  const state = { error: null, holder: frame, fps: 0, ready: false, p5: layer.p5, src: layer.src };
  const gone = new AbortController(); // its listeners, when it is replaced by a new version
  let warm, shown;
  state.warm = new Promise((resolve) => (warm = resolve));
  state.shown = new Promise((resolve) => (shown = resolve));
  const show = () => {
    delete frame.dataset.waiting;
    state.ready = true;
    shown();
  };
  state.unmount = () => {
    gone.abort();
    observer.disconnect();
    clearInterval(state.clockTimer);
    frame.remove();
    state.note?.remove();
  };
  const post = (message) => frame.contentWindow?.postMessage(message, "*");
  const place = () => {
    const box = boxOf();
    Object.assign(frame.style, { left: `${box.x}px`, top: `${box.y}px`, width: `${box.w}px`, height: `${box.h}px` });
  };
  place();
  const observer = new ResizeObserver(place); // the frame's own resize reaches the sketch's windowResized
  observer.observe(container);
  const fail = (message, line) => {
    if (state.error) return;
    state.error = line ? `${message} (${state.src} line ${line})` : message;
    const note = Object.assign(document.createElement("div"), { className: "sketch-error" });
    note.textContent = `The sketch ${state.src} stopped: ${state.error}`;
    note.style.left = frame.style.left;
    note.style.top = frame.style.top;
    container.append(note);
    state.note = note;
    conductor.problem(`sketch ${state.src}`, state.error);
    show();
  };
  const on = (target, type, listener) => target.addEventListener(type, listener, { signal: gone.signal });
  on(window, "message", async (event) => {
    if (event.source !== frame.contentWindow) return;
    const msg = event.data ?? {};
    if (msg.type === "ready") {
      post({ type: "state", state: conductor.state });
      post({ type: "clock", clock: clockModel(conductor.clock) });
      state.clockReady = true;
      warm();
    } else if (msg.type === "running") show();
    else if (msg.type === "send") {
      const answer = await conductor.sketchEvent({ name: msg.name, data: msg.data, to: msg.to, at: msg.at });
      post({ type: "answer", id: msg.id, answer });
    } else if (msg.type === "error") fail(String(msg.message), Number(msg.line) || 0);
    else if (msg.type === "stats") state.fps = Number(msg.fps) || 0;
    else if (msg.type === "memory") state.stop(`it allocated ${Math.round(Number(msg.used) / 2 ** 20)} MB and more: stopped`);
  });
  state.stop = (why) => {
    frame.remove(); // its document, and all it holds, goes
    fail(why, 0);
  };
  on(conductor, "state", () => post({ type: "state", state: conductor.state }));
  on(conductor, "sketch", ({ detail }) => post({ type: "event", event: detail })); // the frame times it
  // The page's estimate changes with each clock exchange: sent to the frame soon after.
  let steered = null;
  state.clockTimer = setInterval(() => {
    if (!state.clockReady || conductor.clock._since === steered) return;
    steered = conductor.clock._since;
    post({ type: "clock", clock: clockModel(conductor.clock) });
  }, 50);
  frame.addEventListener("load", () => setTimeout(warm, 5000)); // a frame that never says it is ready
  frameDocument(layer, conductor, part).then((doc) => {
    if (gone.signal.aborted) return; // replaced before its libraries came
    frame.srcdoc = doc;
    container.append(frame);
  });
  state.run = async (layer, source, version) => {
    Object.assign(state, { src: layer.src, p5: layer.p5 });
    frame.dataset.src = layer.src;
    frame.title = `sketch ${layer.src}`;
    await state.warm;
    post({ type: "run", source, score: conductor.score, version });
    setTimeout(show, 5000); // a sketch that neither draws nor fails (a long preload) is shown all the same
    return state.shown;
  };
  state.fail = fail;
  return state;
}

// The sketch's source, as the conductor serves this version of it (or sent it with a live edit).
export async function sketchSource(layer, version = "", sent = {}) {
  if (typeof sent[layer.src] === "string") return sent[layer.src];
  const response = await fetch(`/score-files/${encodeURI(layer.src)}?v=${encodeURIComponent(version)}`);
  if (!response.ok) throw new Error(`the conductor did not serve it (${response.status})`);
  return response.text();
}

// A global-mode sketch in a frame of its own: in `spare` (a frame prepared for the layer, which
// has p5 loaded already) if given, or in a new one.
export async function mountFrame(container, layer, conductor, part, boxOf, version = "", spare = null) {
  const state = spare ?? prepareFrame(container, layer, conductor, part, boxOf);
  try {
    const source = await sketchSource(layer, version, conductor.sources);
    state.run(layer, source, version);
  } catch (err) {
    state.fail(String(err?.message ?? err), 0);
  }
  return state;
}

// Every p5 function a sketch may define that p5 calls: an error in any of them stays in the layer.
const HOOKS = [
  "preload", "setup", "draw", "windowResized",
  "touchStarted", "touchMoved", "touchEnded",
  "mousePressed", "mouseReleased", "mouseClicked", "doubleClicked", "mouseMoved", "mouseDragged", "mouseWheel",
  "keyPressed", "keyReleased", "keyTyped", "deviceMoved", "deviceTurned", "deviceShaken",
];

// `boxOf()` gives the layer's box in the container's pixels, now: called again on every resize.
export async function mountSketch(container, layer, conductor, part, boxOf, version = "") {
  const holder = document.createElement("div");
  holder.className = "sketch-layer";
  holder.dataset.src = layer.src;
  container.append(holder);
  let box = boxOf();
  const place = () => Object.assign(holder.style, { left: `${box.x}px`, top: `${box.y}px`, width: `${box.w}px`, height: `${box.h}px` });
  place();
  const gone = new AbortController(); // its listeners, when it is replaced by a new version
  const api = sketchApi(conductor, part, box, gone.signal);
  const state = { error: null, instance: null, holder, api, ready: false };
  state.unmount = () => {
    gone.abort();
    observer.disconnect();
    try {
      state.instance?.remove();
    } catch {
      // a sketch that failed in setup
    }
    holder.remove();
  };
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
  window.addEventListener(
    "error",
    (event) => {
      if (String(event.filename).includes(`/score-files/${layer.src}`)) {
        event.preventDefault();
        fail(event.error ?? event.message);
      }
    },
    { signal: gone.signal },
  );
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
  const observer = new ResizeObserver(resize);
  observer.observe(container);
  try {
    const module = await import(`/score-files/${layer.src}?v=${encodeURIComponent(version)}`);
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
  state.ready = true;
  return state;
}
