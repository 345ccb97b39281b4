// Browser client of the Tutti conductor: joins with a role, keeps its clock in step, follows the state.
// Views render every frame from `position()`, which reads the synced clock: never from message arrival.
// The protocol is documented in docs/protocol.md.

import { OffsetEstimator } from "./clocksync.js";

const FAST_UNTIL = 32; // exchanges
const FAST_INTERVAL = 0.5; // seconds
// An overloaded conductor lets audience pages go (or does not let them in): each comes back after
// a random wait in this range (seconds), so that a crowd does not return all at once.
const OVERLOAD_RETRY = globalThis.tuttiOverloadRetry ?? [30, 60];

export function overloadRetry() {
  const [least, most] = OVERLOAD_RETRY;
  return least + Math.random() * (most - least);
}

// The index of the last of `entries` (in time order) at or before t, else 0: a binary search,
// since a replay holds a whole concert's history (a fader at 100 Hz for an hour: 360,000 values).
function lastAt(entries, t, timeOf) {
  let [low, high] = [0, entries.length - 1];
  while (low < high) {
    const mid = (low + high + 1) >> 1;
    if (timeOf(entries[mid]) <= t) low = mid;
    else high = mid - 1;
  }
  return low;
}

// The segment in effect at conductor time t: the last one starting at or before t.
export function segmentAt(state, t) {
  return state.segments[lastAt(state.segments, t, (s) => s.t)];
}

export function positionAt(state, t, duration) {
  const seg = segmentAt(state, t);
  const pos = seg.playing ? seg.pos + (t - seg.t) * seg.rate : seg.pos;
  return Math.min(Math.max(pos, 0), duration);
}

// What the performance is doing at conductor time t, as a stage view shows it: "waiting" (at the
// start, not started), "count-in" (a play with a count-in is on its way: `downbeat` is its
// conductor time), "playing", "paused" or "ended" (at the end of the piece).
export function phaseAt(state, t, duration) {
  const seg = segmentAt(state, t);
  const pos = positionAt(state, t, duration);
  if (pos >= duration) return { phase: "ended" };
  if (seg.playing) return { phase: "playing" };
  const next = state.segments.slice(lastAt(state.segments, t, (s) => s.t)).find((s) => s.t > t && s.playing);
  if (next && next.count_in > 0 && t >= next.t - next.count_in) return { phase: "count-in", downbeat: next.t };
  return { phase: pos === 0 ? "waiting" : "paused" };
}

// A change from a `state` event, applied to a state as the conductor applied it: from the
// change's time on, the new segment (or parameter value) replaces whatever was set for later.
// Entries superseded before `now` are dropped, so a state stays small over a whole concert.
export function applyChange(state, change, now = -Infinity) {
  const set = (entries, t, entry, timeOf) => {
    const kept = entries.filter((e) => timeOf(e) < t);
    kept.push(entry);
    let first = 0;
    while (first + 1 < kept.length && timeOf(kept[first + 1]) <= now) first++;
    return kept.slice(first);
  };
  if (change.segment) state.segments = set(state.segments, change.t, change.segment, (s) => s.t);
  for (const [name, value] of Object.entries(change.params ?? {})) {
    state.params[name] = set(state.params[name] ?? [], change.t, [change.t, value], (e) => e[0]);
  }
  if (change.rehearsal) state.rehearsal = change.rehearsal; // the loop and click track
  state.seq = change.seq;
  return state;
}

// A `state` event's changes (or snapshot) applied to the state a client holds.
export function applyUpdate(state, update, now) {
  if (update.snapshot) state = structuredClone(update.snapshot);
  for (const change of update.changes ?? []) if (state && change.seq > state.seq) applyChange(state, change, now);
  return state;
}

export function paramAt(state, name, t) {
  const entries = state.params[name];
  if (!entries) return undefined;
  return entries[lastAt(entries, t, (e) => e[0])][1];
}

export class Conductor extends EventTarget {
  constructor({ url = location.origin, auth, burst = 8, spacing = 0.02, resync = 3 } = {}) {
    super();
    Object.assign(this, { burst, spacing, resync });
    this.clock = new OffsetEstimator();
    this.score = null;
    this.state = null;
    this.you = null;
    this.connected = false;
    this.socket = io(url, { auth, transports: ["websocket"], reconnectionDelayMax: 2000 });
    this.socket.on("welcome", (msg) => {
      const edited = this.version !== undefined && msg.version !== this.version; // while it was away
      this.you = msg.you;
      this.score = msg.score;
      this.version = msg.version;
      this.files = msg.files ?? {};
      this.sources = {}; // sent with a live edit: a page that was away fetches the files of this version
      this.state = msg.state;
      this.connected = true;
      this.syncBurst();
      this.emit("welcome", msg);
      if (edited) this.emit("score", msg);
    });
    // A live edit taken by the conductor (`tutti serve --watch`): the views show it where they are.
    this.socket.on("score", (msg) => {
      Object.assign(this, { score: msg.score, version: msg.version, files: msg.files, sources: msg.sources ?? {} });
      this.emit("score", msg);
    });
    this.socket.on("state", (msg) => {
      this.state = applyUpdate(this.state, msg, this.now());
      this.emit("state", msg);
    });
    this.socket.on("sketch", (msg) => this.emit("sketch", msg));
    this.socket.on("error", (err) => {
      if (err.code === "overloaded") this.letGo = true;
      this.emit("refused", err);
    });
    this.socket.on("disconnect", (reason) => {
      this.connected = false;
      this.emit("disconnected", reason);
      // socket.io comes back by itself from a lost connection, not from one the server closed.
      if (reason === "io server disconnect" && this.letGo) {
        this.letGo = false;
        this.retry = setTimeout(() => this.socket.connect(), overloadRetry() * 1000);
      }
    });
    const loop = async () => {
      if (this.connected) await this.syncBurst();
      this.timer = setTimeout(loop, this.nextSync() * 1000);
    };
    this.timer = setTimeout(loop, 500);
  }

  // Stops for good: no more syncing, no coming back.
  close() {
    clearTimeout(this.timer);
    clearTimeout(this.retry);
    this.socket.close();
  }

  // Sync often until the estimate rests on enough exchanges, then every `resync` seconds.
  nextSync() {
    return this.clock.samples < FAST_UNTIL ? FAST_INTERVAL : this.resync;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async syncOnce() {
    if (!this.socket.connected) return; // a buffered sync would carry a send time from before
    const t0 = this.clock.local();
    const reply = await this.socket.timeout(5000).emitWithAck("sync", t0);
    const t3 = this.clock.local();
    if (Array.isArray(reply) && reply.length === 3 && reply[0] === t0) this.clock.add(t0, reply[1], reply[2], t3);
  }

  async syncBurst() {
    if (this.syncing) return;
    this.syncing = true;
    try {
      for (let i = 0; i < this.burst; i++) {
        await this.syncOnce().catch(() => {});
        await new Promise((r) => setTimeout(r, this.spacing * 1000));
      }
      const c = this.clock;
      if (c.synced) this.socket.emit("report", { rtt: Math.min(c.rtt, 60), offset: c.offset, error: Math.min(c.error, 60), delay: Math.min(c.delay, 60) });
    } finally {
      this.syncing = false;
    }
  }

  now() {
    return this.clock.now();
  }

  position(t = this.now()) {
    return this.state && this.score ? positionAt(this.state, t, this.score.duration) : 0;
  }

  param(name, t = this.now()) {
    return this.state ? paramAt(this.state, name, t) : undefined;
  }

  playing(t = this.now()) {
    return this.state ? segmentAt(this.state, t).playing : false;
  }

  // Whether the latest change sets it playing, even if that is still a lookahead away.
  goingToPlay() {
    return Boolean(this.state?.segments.at(-1)?.playing);
  }

  phase(t = this.now()) {
    return this.state && this.score ? phaseAt(this.state, t, this.score.duration) : { phase: "waiting" };
  }

  // The score time the performance plays at, per second of conductor time (1 at the score's tempo).
  rate(t = this.now()) {
    return this.state ? segmentAt(this.state, t).rate : 1;
  }

  // A problem on this page the conductor should know of (a sketch that failed): shown on the console.
  problem(what, message) {
    if (this.connected) this.socket.emit("problem", { what: String(what).slice(0, 64), message: String(message).slice(0, 300) });
  }

  // An event for other parts' sketches: { name, data, to?: [part ids], at?: score time }. The
  // conductor's answer: { ok: true, t? } or a refusal, with its reason.
  async sketchEvent(fields) {
    try {
      return await this.socket.timeout(5000).emitWithAck("sketch", fields);
    } catch {
      return { ok: false, code: "no_answer", message: "no answer from the conductor" };
    }
  }

  section(t = this.now()) {
    const pos = this.position(t);
    const sections = this.score?.sections ?? [];
    let current = null;
    let next = null;
    for (const s of sections) {
      if (s.start <= pos) current = s;
      else if (!next) next = s;
    }
    return { current, next, untilNext: next ? next.start - pos : null };
  }

  // The performer links of every part, as URLs and QR codes (conductor role only).
  invite(base) {
    return this.socket.timeout(5000).emitWithAck("invite", { base });
  }

  command(cmd, fields = {}) {
    return this.socket.timeout(5000).emitWithAck("command", { cmd, ...fields });
  }

  // A sound outside the score (conductor role only): { address, args, target?, to?, at?, schedule?, late? }.
  sound(fields) {
    return this.socket.timeout(5000).emitWithAck("sound", fields);
  }

  control(id, value) {
    return this.socket.timeout(5000).emitWithAck("control", { id, value });
  }
}
