import assert from "node:assert/strict";
import { test } from "node:test";
import { OffsetEstimator } from "../lib/clocksync.js";
import { applyChange, applyUpdate, paramAt, positionAt } from "../lib/conductor.js";

// A deterministic generator, so a failing case can be replayed.
function rng(seed) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

function exchange(clock, offset, up, down, t0) {
  // Client local time t0; conductor time = local + offset.
  const t1 = t0 + up + offset;
  const t2 = t1 + 0.0001;
  const t3 = t2 - offset + down;
  return [t0, t1, t2, t3];
}

test("converges to the true offset under random symmetric delay, within its own bound", () => {
  const random = rng(7);
  const truth = 12.345;
  const est = new OffsetEstimator({ local: () => 0 });
  let t = 1000;
  for (let i = 0; i < 200; i++) {
    est.add(...exchange(est, truth, 0.001 + random() * 0.02, 0.001 + random() * 0.02, t));
    t += 0.05;
    assert.ok(Math.abs(est.estimate - truth) <= est.error + 1e-9, "the error bound must hold");
  }
  assert.ok(Math.abs(est.estimate - truth) < 0.0005, `estimate ${est.estimate}`);
  assert.ok(est.rtt >= 0.002);
});

test("rejects impossible exchanges", () => {
  const est = new OffsetEstimator({ local: () => 0 });
  assert.equal(est.add(10, 5, 4, 11), false); // conductor replied before it received
  assert.equal(est.add(10, 5, 5.1, 9), false); // received before sent
  assert.equal(est.synced, false);
});

test("slews at a bounded rate after the first burst, and steps on large corrections", () => {
  let now = 100;
  const est = new OffsetEstimator({ local: () => now, settle: 1, maxSlew: 0.002, stepThreshold: 0.05 });
  est.add(...exchange(est, 1.0, 0.01, 0.001, now)); // first: steps, 4.5 ms high (slow uplink)
  assert.ok(Math.abs(est.offset - 1.0045) < 1e-9);
  // A faster uplink arrives: the estimate moves by -4.5 ms, the applied offset follows slowly.
  const ex = exchange(est, 1.0, 0.001, 0.001, now);
  est.add(...ex);
  now = ex[3]; // slewing starts when the exchange completes
  assert.ok(Math.abs(est.estimate - 1.0) < 1e-9);
  assert.ok(Math.abs(est.offset - 1.0045) < 1e-9, "no jump at the moment of the correction");
  now += 1;
  assert.ok(Math.abs(est.offset - 1.0025) < 1e-9, "2 ms per second");
  now += 10;
  assert.ok(Math.abs(est.offset - 1.0) < 1e-9, "arrives and stays");
  const far = new OffsetEstimator({ local: () => now, settle: 1 });
  far.add(...exchange(far, 0, 0.001, 0.001, now));
  far.add(...exchange(far, 0.5, 0.001, 0.001, now)); // a path change: a 0.25 s correction steps at once
  assert.ok(Math.abs(far.estimate - 0.25) < 1e-9);
  assert.ok(Math.abs(far.offset - far.estimate) < 1e-9);
});

test("forgets exchanges beyond the window and older than maxAge", () => {
  const est = new OffsetEstimator({ local: () => 0, window: 4, maxAge: 10 });
  for (let i = 0; i < 6; i++) est.add(...exchange(est, 0, 0.001, 0.001, i));
  assert.equal(est.samples, 4);
  est.add(...exchange(est, 0, 0.001, 0.001, 100));
  assert.equal(est.samples, 1);
});

test("position and parameters follow the segments in effect at a time", () => {
  const state = {
    seq: 2,
    segments: [
      { t: 10, pos: 0, rate: 1, playing: true },
      { t: 20, pos: 50, rate: 2, playing: true },
      { t: 30, pos: 70, rate: 1, playing: false },
    ],
    params: { density: [[0, 0.3], [25, 0.8]] },
  };
  assert.equal(positionAt(state, 15, 100), 5);
  assert.equal(positionAt(state, 25, 100), 60);
  assert.equal(positionAt(state, 40, 100), 70);
  assert.equal(positionAt(state, 29.99, 60), 60, "clamped at the end");
  assert.equal(paramAt(state, "density", 24), 0.3);
  assert.equal(paramAt(state, "density", 25), 0.8);
});

test("a change replaces what was set for its time and later, as the conductor's transport does", () => {
  const state = {
    seq: 1,
    segments: [{ t: 10, pos: 0, rate: 1, playing: true }],
    params: { density: [[0, 0.3], [40, 0.9]] },
  };
  applyChange(state, { seq: 2, t: 30, command: {}, params: { density: 0.5 } });
  assert.deepEqual(state.params.density, [[0, 0.3], [30, 0.5]], "the value set for 40 is cancelled");
  applyChange(state, { seq: 3, t: 20, command: {}, segment: { t: 20, pos: 10, rate: 1, playing: false } });
  assert.equal(positionAt(state, 25, 100), 10);
  assert.equal(state.seq, 3);
  applyChange(state, { seq: 4, t: 50, command: {}, params: { x: 1, y: 0 } }, 45);
  assert.deepEqual([state.params.x, state.params.y], [[[50, 1]], [[50, 0]]], "both axes of an xy pad in one change");
  assert.equal(paramAt(state, "density", 46), 0.5);
});

test("entries superseded before now are dropped, so a state stays small", () => {
  let state = { seq: 0, segments: [{ t: 0, pos: 0, rate: 1, playing: false }], params: { density: [[0, 0]] } };
  for (let i = 1; i <= 1000; i++) state = applyUpdate(state, { changes: [{ seq: i, t: i, command: {}, params: { density: i / 1000 } }] }, i);
  assert.equal(state.params.density.length, 1);
  assert.equal(paramAt(state, "density", 1000), 1);
});

test("an update applies only changes newer than the state, and a snapshot replaces it", () => {
  const state = { seq: 5, segments: [{ t: 0, pos: 0, rate: 1, playing: false }], params: { density: [[0, 0.2]] } };
  applyUpdate(state, { changes: [{ seq: 5, t: 1, command: {}, params: { density: 0.9 } }] });
  assert.equal(paramAt(state, "density", 2), 0.2, "already in the snapshot: not applied twice");
  const snapshot = { seq: 9, segments: [{ t: 0, pos: 3, rate: 1, playing: false }], params: {} };
  assert.deepEqual(applyUpdate(state, { snapshot }), snapshot);
});

test("a whole concert's history is read by time, as a linear scan would, at any length", () => {
  const values = Array.from({ length: 360_000 }, (_, i) => [i / 100, i % 7]); // an hour of a fader at 100 Hz
  values.splice(5, 0, [0.04, 99]); // two values at one time: the later one counts
  const segments = [{ t: 0, pos: 0, rate: 1, playing: true }, { t: 600, pos: 600, rate: 1, playing: false }];
  const state = { segments, params: { flow: values } };
  const linear = (t) => values.filter(([at]) => at <= t).at(-1)?.[1] ?? values[0][1];
  for (const t of [-1, 0, 0.04, 0.041, 1234.567, 3599.99, 5000]) assert.equal(paramAt(state, "flow", t), linear(t), `at ${t}`);
  assert.equal(positionAt(state, 700, 3600), 600);
  assert.equal(positionAt(state, 300, 3600), 300);
  const started = performance.now();
  for (let i = 0; i < 10_000; i++) paramAt(state, "flow", i * 0.36);
  assert.ok(performance.now() - started < 1000, "ten thousand reads of an hour's history take under a second");
});
