import assert from "node:assert/strict";
import { test } from "node:test";
import { LiveControl, LiveSender, refusalText } from "../lib/live.js";

// Display frames run by hand, and a conductor whose answers the test gives when it likes.
function rig() {
  const frames = [];
  const sent = [];
  const answers = [];
  const send = (value) => {
    sent.push(value);
    return new Promise((resolve) => answers.push(resolve));
  };
  const frame = async () => {
    for (const f of frames.splice(0)) f();
    await settle();
  };
  const answer = async (reply) => {
    answers.shift()(reply);
    await settle();
  };
  return { frames, sent, send, frame, answer, schedule: (f) => frames.push(f) };
}

const settle = () => new Promise((r) => setImmediate(r));

test("sends at most one value per frame, the newest", async () => {
  const r = rig();
  const sender = new LiveSender(r.send, { frame: r.schedule });
  sender.set(0.1);
  sender.set(0.2);
  assert.deepEqual(r.sent, []);
  await r.frame();
  assert.deepEqual(r.sent, [0.2]);
  assert.equal(r.frames.length, 0, "nothing more to send");
});

test("keeps one value in flight; the newest waits for the answer, older ones are dropped", async () => {
  const r = rig();
  const sender = new LiveSender(r.send, { frame: r.schedule });
  sender.set(0.1);
  await r.frame();
  for (const v of [0.2, 0.3, 0.4]) {
    sender.set(v);
    await r.frame();
  }
  assert.deepEqual(r.sent, [0.1], "no second send before the answer");
  await r.answer({ ok: true, seq: 1, t: 10 });
  assert.deepEqual(r.sent, [0.1], "the next send waits for a frame");
  await r.frame();
  assert.deepEqual(r.sent, [0.1, 0.4]);
  await r.answer({ ok: true, seq: 2, t: 11 });
  await r.frame();
  assert.deepEqual(r.sent, [0.1, 0.4], "the last value went once");
});

test("is busy until its last accepted value is in effect", async () => {
  const r = rig();
  const sender = new LiveSender(r.send, { frame: r.schedule });
  assert.equal(sender.busy(0), false);
  sender.set(1);
  assert.equal(sender.busy(0), true);
  await r.frame();
  assert.equal(sender.busy(0), true);
  await r.answer({ ok: true, seq: 1, t: 10 });
  assert.equal(sender.busy(9.9), true);
  assert.equal(sender.busy(10), false);
});

test("passes refusals and failures on, and goes on sending after them", async () => {
  const r = rig();
  const seen = [];
  let fail = true;
  const send = (value) => (fail ? Promise.reject(new Error("timeout")) : r.send(value));
  const sender = new LiveSender(send, { frame: r.schedule, onAnswer: (answer, value) => seen.push([answer.code, value]) });
  sender.set(5);
  await r.frame();
  assert.deepEqual(seen, [["no_answer", 5]]);
  assert.equal(sender.busy(0), false, "a failed value holds nothing");
  fail = false;
  sender.set(6);
  await r.frame();
  await r.answer({ ok: false, code: "out_of_range", message: "fader 'level' takes 0 to 1" });
  assert.deepEqual(seen.at(-1), ["out_of_range", 6]);
  assert.equal(refusalText({ ok: false, code: "out_of_range", message: "fader 'level' takes 0 to 1" }), "refused: fader 'level' takes 0 to 1");
  assert.equal(refusalText({ ok: false, code: "forbidden" }), "refused: forbidden");
  assert.equal(refusalText({ ok: true }), "");
});

test("a control is held while any pointer is down on it, released anywhere", async () => {
  const r = rig();
  const element = new EventTarget();
  const page = new EventTarget();
  const control = new LiveControl(element, r.send, { frame: r.schedule, releases: page });
  const pointer = (target, type, pointerId) => target.dispatchEvent(Object.assign(new Event(type), { pointerId }));
  pointer(element, "pointerdown", 1);
  pointer(element, "pointerdown", 2);
  assert.equal(control.held(0), true);
  pointer(page, "pointerup", 1);
  assert.equal(control.held(0), true, "one finger is still on it");
  pointer(page, "pointercancel", 2);
  assert.equal(control.held(0), false);
  control.set(0.5);
  assert.equal(control.held(0), true, "its own value is on its way");
});
