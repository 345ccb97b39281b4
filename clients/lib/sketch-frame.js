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

// A timed event fires at its time on this frame's synced clock: a timer wakes it LEAD seconds ahead
// (the browser may hold back the timers of a frame no one has touched, by up to 32 ms in Chromium),
// and the rest of the wait is a loop of messages to itself, each a short task: neither a late timer
// nor a frame being drawn can make the event late, and the page (which may share this thread) still
// draws between them. Fired from the page instead, a message could wait behind its frames.
const LEAD = 0.04;
const due = []; // events in their last LEAD seconds, soonest first
const ticks = new MessageChannel();
ticks.port1.onmessage = () => {
  while (due.length && due[0].t <= now()) due.shift().fire();
  if (due.length) ticks.port2.postMessage(0);
};
function fireAt(event) {
  const meta = { from: event.part, sender: event.sender, at: event.at ?? null, late: 0 };
  const fire = () => tutti._fire(event.name, event.data, { ...meta, late: Math.max(0, now() - (event.t ?? 0)) });
  if (event.t == null) return tutti._fire(event.name, event.data, meta);
  setTimeout(() => {
    due.push({ t: event.t, fire });
    due.sort((a, b) => a.t - b.t);
    if (due.length === 1) ticks.port2.postMessage(0);
  }, Math.max(0, (event.t - now() - LEAD) * 1000));
}

addEventListener("message", (event) => {
  if (event.source !== parent) return;
  const msg = event.data;
  if (msg.type === "state") state = msg.state;
  else if (msg.type === "clock") steer(msg.clock);
  else if (msg.type === "event") fireAt(msg.event);
  else if (msg.type === "answer") tutti._answer(msg.id, msg.answer);
  else if (msg.type === "run") tuttiRun(msg);
});
// Ready for a sketch once p5 has loaded and looked for one (p5 starts a global-mode sketch itself
// only if one is there on load: here it never is, the sketch comes later).
const ready = () => setTimeout(() => parent.postMessage({ type: "ready" }, "*"));
if (document.readyState === "complete") ready();
else addEventListener("load", ready);
