// The clock of a global-mode sketch's frame: the performer page's state and clock estimate, sent to
// it as messages, so that `tutti.time()` reads the synced clock in the frame itself, as the page does
// (both read the same system clock). A module: run after sketch-boot.js and before p5 starts.
import { OffsetEstimator } from "./clocksync.js";
import { paramAt, positionAt } from "./conductor.js";
import { sectionAt } from "./score-view.js";

const init = JSON.parse(document.getElementById("tutti-init").textContent);
const tutti = window.tutti;
const clock = new OffsetEstimator();
let state = init.state;
const steer = (model) => Object.assign(clock, model);
steer(init.clock);
const now = () => clock.now();

Object.assign(tutti, {
  now,
  time: (t = now()) => positionAt(state, t, tutti.score.duration),
  param: (name, t = now()) => paramAt(state, name, t),
  playing: (t = now()) => {
    let playing = false;
    for (const s of state.segments) if (s.t <= t) playing = s.playing;
    return playing;
  },
  section: (t = now()) => sectionAt(tutti.score, positionAt(state, t, tutti.score.duration)),
});

addEventListener("message", (event) => {
  if (event.source !== parent) return;
  const msg = event.data;
  if (msg.type === "state") state = msg.state;
  else if (msg.type === "clock") steer(msg.clock);
  else if (msg.type === "event") tutti._fire(msg.event.name, msg.event.data, msg.meta); // at its time
  else if (msg.type === "answer") tutti._answer(msg.id, msg.answer);
});
parent.postMessage({ type: "ready" }, "*");
