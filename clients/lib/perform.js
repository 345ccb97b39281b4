// The performer view: one part, drawn every frame from the synced conductor clock, with the
// position, section and state large enough to read from a music stand.
import { followConnection, join, keepAwake, params } from "./join.js";
import { LiveControl, refusalText } from "./live.js";
import { areaOf, barBeat, drawPart, loopText, sectionAt } from "./score-view.js";
import { mountFrame, mountSketch, prepareFrame } from "./sketch.js";

const $ = (id) => document.getElementById(id);
const stage = $("stage");
const canvas = $("score");
const NAME_KEY = "tutti-name";
const PHASES = { waiting: "Waiting for the downbeat", "count-in": "Count-in", playing: "Playing", paused: "Paused", ended: "End" };

// The parts to choose from; the link keeps everything else the page was opened with (?token=, ?name=).
async function pickPart() {
  const score = await (await fetch("/api/score")).json();
  const box = document.createElement("div");
  box.className = "picker";
  box.innerHTML = `<h1></h1><p>Choose your part</p>`;
  box.querySelector("h1").textContent = score.title;
  for (const part of score.parts) {
    const query = new URLSearchParams(params());
    query.set("part", part.id);
    const a = document.createElement("a");
    a.href = `?${query}`;
    a.textContent = part.site ? `${part.name} — ${part.site}` : part.name;
    a.style.borderLeft = `6px solid ${part.color}`;
    box.append(a);
  }
  document.querySelector(".stagebar").remove();
  document.querySelector(".stage-area").replaceWith(box);
}

// The conductor lists performers by name: asked once on this device, beside the clock, never in the way.
function askName(conductor) {
  const form = $("name");
  form.hidden = false;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("name-input").value.trim().slice(0, 40);
    if (!name) return;
    localStorage.setItem(NAME_KEY, name);
    form.hidden = true;
    conductor.socket.auth = { ...conductor.socket.auth, name };
    conductor.socket.disconnect().connect(); // joins again under the new name
  });
}

// Each kind of control: its element, and how it shows its parameter's value (`read` gives a
// parameter's value now). `live` sends the control's values; see live.js.
const kinds = {
  fader(control, bind) {
    const input = Object.assign(document.createElement("input"), {
      type: "range", min: control.min, max: control.max, step: (control.max - control.min) / 200, value: control.default,
    });
    const live = bind(input);
    input.addEventListener("input", () => live.set(Number(input.value)));
    const show = (read) => {
      const value = read(control.param);
      if (value !== undefined) input.value = value;
    };
    return { element: input, live, show };
  },

  toggle(control, bind) {
    const button = document.createElement("button");
    const live = bind(button);
    let on = control.default;
    const draw = () => { button.classList.toggle("on", on); button.textContent = on ? "on" : "off"; };
    button.addEventListener("click", () => { on = !on; draw(); live.set(on); });
    draw();
    const show = (read) => {
      const value = read(control.param);
      if (value === undefined || (value !== 0) === on) return;
      on = value !== 0; // the conductor sets a toggle's parameter to 1 or 0
      draw();
    };
    return { element: button, live, show };
  },

  xy(control, bind) {
    const pad = Object.assign(document.createElement("canvas"), { className: "xy", width: 120, height: 120 });
    const live = bind(pad);
    let [x, y] = control.default;
    const draw = () => {
      const g = pad.getContext("2d");
      g.clearRect(0, 0, 120, 120);
      g.fillStyle = "#f2c14e";
      g.beginPath();
      g.arc(x * 120, (1 - y) * 120, 8, 0, 2 * Math.PI);
      g.fill();
    };
    const move = (e) => {
      const r = pad.getBoundingClientRect();
      x = Math.min(1, Math.max(0, (e.clientX - r.left) / r.width));
      y = Math.min(1, Math.max(0, 1 - (e.clientY - r.top) / r.height));
      draw();
      live.set([x, y]);
    };
    pad.addEventListener("pointerdown", (e) => { pad.setPointerCapture(e.pointerId); move(e); });
    pad.addEventListener("pointermove", (e) => e.buttons && move(e));
    draw();
    const show = (read) => {
      const [px, py] = [read(`${control.param}_x`), read(`${control.param}_y`)];
      if (px === undefined || py === undefined || (px === x && py === y)) return;
      [x, y] = [px, py];
      draw();
    };
    return { element: pad, live, show };
  },
};

// A control bound to a parameter follows it when someone else moves it, but not while this performer
// touches it or their own latest value is on its way: the next touch then starts where the sound is.
function makeControl(conductor, control) {
  const el = document.createElement("div");
  el.className = "control";
  const label = document.createElement("div");
  label.textContent = control.label ?? control.id;
  const refusal = Object.assign(document.createElement("div"), { className: "refusal" });
  const onAnswer = (answer) => (refusal.textContent = refusalText(answer));
  const bind = (element) => new LiveControl(element, (value) => conductor.control(control.id, value), { onAnswer });
  const { element, live, show } = kinds[control.type](control, bind);
  el.dataset.control = control.id;
  el.append(element, label, refusal);
  const read = (name) => conductor.param(name);
  const follow = () => {
    if (control.param && !live.held(conductor.now())) show(read);
  };
  return { el, follow };
}

async function main() {
  const partId = params().get("part");
  if (!partId) return pickPart();
  // The composer's page shows each part as its performers see it, joined as the composer (?as=composer).
  const composer = params().get("as") === "composer";
  const given = composer ? "composer" : params().get("name") ?? localStorage.getItem(NAME_KEY);
  const role = composer ? "composer" : "performer";
  const conductor = await join({ role, part: partId, name: given ? given.slice(0, 40) : undefined });
  const score = conductor.score;
  if (!given) askName(conductor);
  // For tests: frames drawn, the last position and when; the sketches; edits shown, the last one when
  // it reached the page and when it was shown.
  const view = { frames: 0, position: 0, wall: 0, sketches: [], edits: 0, receivedAt: 0, shownAt: 0 };
  window.tutti = conductor;
  window.tuttiView = view;
  let part = score.parts.find((p) => p.id === partId);
  document.title = `${part.name} — ${score.title}`;
  $("part").textContent = `${part.name}${part.site ? " · " + part.site : ""}`;
  // The part's sketches, mounted again when a live edit changes one (its file, or its layer): the new
  // ones replace the old once they have drawn, so the view never goes blank; nothing else is reloaded.
  // Each global-mode layer keeps a spare frame, made when the page is idle, with p5 loaded in it and
  // waiting: an edit then only runs the new sketch in it, rather than load and compile p5 again.
  let sketchKey = "";
  let spares = []; // per layer: a frame waiting for its sketch, or null
  const boxOf = (layer) => () => areaOf(layer, stage.clientWidth, stage.clientHeight);
  const fits = (spare, layer) => spare && layer.p5 === spare.p5 && String(layer.area) === String(spare.area);
  const idle = (fn) => (window.requestIdleCallback ? requestIdleCallback(fn, { timeout: 300 }) : setTimeout(fn, 300));
  const warmSpares = (key, layers) =>
    idle(() => {
      if (key !== sketchKey || spares.length) return; // an edit came meanwhile: its own spares follow it
      spares = layers.map((layer) => {
        if (!layer.p5) return null;
        return Object.assign(prepareFrame(stage, layer, conductor, part, boxOf(layer)), { area: layer.area });
      });
    });
  // The conductor can turn a part's sketches off (a sketch that hangs the page): the score is then
  // drawn without them, and a line says so where they were.
  const sketchesOff = () => (conductor.state.rehearsal?.sketches_off ?? []).includes(partId);
  const mountSketches = async () => {
    const off = sketchesOff();
    const all = part.layers.filter((l) => l.type === "sketch");
    const layers = off ? [] : all;
    const key = JSON.stringify([off, layers.map((l) => [l, conductor.files?.[l.src]])]);
    $("sketch-off").hidden = !off;
    if (off && all.length) {
      const box = areaOf(all[0], stage.clientWidth, stage.clientHeight);
      Object.assign($("sketch-off").style, { left: `${box.x + 8}px`, top: `${box.y + 8}px` });
    }
    if (key === sketchKey) return;
    sketchKey = key;
    const old = view.sketches;
    const warm = spares;
    spares = [];
    const fresh = [];
    for (const [i, layer] of layers.entries()) {
      const version = conductor.files?.[layer.src] ?? "";
      const spare = fits(warm[i], layer) ? warm[i] : null;
      if (warm[i] && !spare) warm[i].unmount();
      if (layer.p5) fresh.push(await mountFrame(stage, layer, conductor, part, boxOf(layer), version, spare));
      else fresh.push(await mountSketch(stage, layer, conductor, part, boxOf(layer), version));
    }
    warm.slice(layers.length).forEach((s) => s?.unmount());
    await Promise.all(fresh.map((s) => s.shown));
    if (key !== sketchKey) return fresh.forEach((s) => s.unmount()); // a newer edit came meanwhile
    view.sketches = fresh;
    old.forEach((s) => s.unmount());
    warmSpares(key, layers);
  };
  mountSketches(); // the rest of the view draws meanwhile
  let wasOff = sketchesOff();
  conductor.addEventListener("state", () => {
    if (sketchesOff() === wasOff) return;
    wasOff = sketchesOff();
    mountSketches();
  });
  conductor.addEventListener("score", async () => {
    const receivedAt = (performance.timeOrigin + performance.now()) / 1000;
    part = conductor.score.parts.find((p) => p.id === partId) ?? part;
    $("part").textContent = `${part.name}${part.site ? " · " + part.site : ""}`;
    await mountSketches();
    view.edits += 1;
    view.receivedAt = receivedAt;
    view.shownAt = (performance.timeOrigin + performance.now()) / 1000;
  });
  const controls = part.controls.map((control) => makeControl(conductor, control));
  if (controls.length) {
    $("controls").append(...controls.map((c) => c.el));
    $("controls").hidden = false;
  }
  followConnection(conductor, $("banner"));
  keepAwake();

  const ctx = canvas.getContext("2d");
  let shown = "";
  function frame() {
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr); // follows rotation and resizing
      canvas.height = Math.round(height * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const pos = conductor.position();
    const score = conductor.score; // a live edit replaces it
    drawPart(ctx, score, part, pos, width, height);
    const { phase, downbeat } = conductor.phase();
    const { current } = sectionAt(score, pos);
    const clock = `${Math.floor(pos / 60)}:${String(Math.floor(pos % 60)).padStart(2, "0")}`;
    let countin = "";
    if (phase === "count-in") countin = String(Math.max(1, Math.ceil((downbeat - conductor.now()) / (60 / score.tempo.bpm / conductor.rate(downbeat)))));
    else if (phase === "ended") countin = "End of the piece";
    const span = conductor.state.rehearsal?.loop;
    const loop = span && pos >= span.start && pos < span.end ? loopText(score, span) : ""; // shown while in it
    const text = [barBeat(score, pos), clock, phase, current?.name ?? current?.id ?? "", countin, loop].join("|");
    if (text !== shown) { // the DOM only when what it shows changes
      shown = text;
      $("barbeat").textContent = barBeat(score, pos);
      $("clock").textContent = clock;
      $("phase").textContent = PHASES[phase];
      $("phase").dataset.phase = phase;
      $("section").textContent = current ? current.name ?? current.id : "";
      $("countin").textContent = countin;
      $("countin").hidden = !countin;
      $("countin").dataset.phase = phase;
      $("loopmark").textContent = loop;
      $("loopmark").hidden = !loop;
    }
    for (const control of controls) control.follow();
    view.frames += 1;
    view.position = pos;
    view.wall = performance.timeOrigin + performance.now();
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);
}

main();
