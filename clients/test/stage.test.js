// The stage view's pure parts: the performance's phase, bar-aware positions, wrapped text.
import assert from "node:assert/strict";
import test from "node:test";

import { phaseAt } from "../lib/conductor.js";
import { barBeat, parsePosition, wrapText } from "../lib/score-view.js";

const score = { duration: 180, tempo: { bpm: 72, beats_per_bar: 4 } };
const seg = (t, pos, playing, count_in = 0) => ({ t, pos, rate: 1, playing, count_in });

test("the phase: waiting, count-in, playing, paused, ended", () => {
  const waiting = { segments: [seg(0, 0, false)] };
  assert.equal(phaseAt(waiting, 10, 180).phase, "waiting");
  const counting = { segments: [seg(0, 0, false), seg(20, 0, true, 5)] };
  assert.equal(phaseAt(counting, 14, 180).phase, "waiting"); // before the count-in starts
  assert.deepEqual(phaseAt(counting, 16, 180), { phase: "count-in", downbeat: 20 });
  assert.equal(phaseAt(counting, 21, 180).phase, "playing");
  const paused = { segments: [seg(0, 0, false), seg(5, 0, true), seg(10, 5, false)] };
  assert.equal(phaseAt(paused, 11, 180).phase, "paused");
  assert.equal(phaseAt(paused, 200, 180).phase, "paused");
  const ended = { segments: [seg(0, 170, true)] };
  assert.equal(phaseAt(ended, 9, 180).phase, "playing");
  assert.equal(phaseAt(ended, 10, 180).phase, "ended");
  // A play with no count-in shows no count while it waits for its lookahead.
  assert.equal(phaseAt({ segments: [seg(0, 0, false), seg(0.2, 0, true)] }, 0.1, 180).phase, "waiting");
});

test("positions are read as bars, minutes and seconds, or seconds; 1.30 is asked about", () => {
  assert.deepEqual(parsePosition(score, "b13"), { seconds: 40 });
  assert.ok(Math.abs(parsePosition(score, "b13.3").seconds - (40 + 2 * (60 / 72))) < 1e-9);
  assert.deepEqual(parsePosition(score, "1:30"), { seconds: 90 });
  assert.deepEqual(parsePosition(score, "90"), { seconds: 90 });
  assert.deepEqual(parsePosition(score, "12.5"), { seconds: 12.5 });
  assert.match(parsePosition(score, "1.30").error, /1:30 or 1\.3/);
  assert.match(parsePosition(score, "b13.5").error, /beats from 1 to 4/);
  assert.match(parsePosition(score, "4:00").error, /past the end/);
  assert.match(parsePosition(score, "soon").error, /b13/);
  assert.equal(barBeat(score, 40), "13.1");
  assert.equal(barBeat(score, 0), "1.1");
  assert.equal(barBeat(score, 180), "55.1");
});

test("text wraps at word boundaries within the width", () => {
  const ctx = { measureText: (s) => ({ width: s.length * 10 }) };
  assert.deepEqual(wrapText(ctx, "Single pings, far apart", 130), ["Single pings,", "far apart"]);
  assert.deepEqual(wrapText(ctx, "short", 130), ["short"]);
  assert.deepEqual(wrapText(ctx, "unbreakablewordthatislong", 50), ["unbreakablewordthatislong"]);
});
