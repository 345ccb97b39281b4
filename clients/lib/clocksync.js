// Conductor-clock estimator for browsers: the same algorithm as conductor/core/clock.py.
//
// offset = conductor time - local time. For an exchange (t0 client send, t1 conductor receive,
// t2 conductor send, t3 client receive): t1 - t0 = up + offset and t3 - t2 = down - offset, so
// over a window  -min(t3 - t2) <= offset <= min(t1 - t0). The estimate is the middle of that
// interval and half its width bounds the error. The applied offset slews toward the estimate at
// a bounded rate so the score never jumps; it steps only when the bound rules it out, just after
// joining or by a large correction.
// All times are seconds.

export class OffsetEstimator {
  constructor({
    window = 256,
    maxAge = 60,
    maxSlew = 0.002,
    stepThreshold = 0.05,
    settle = 32,
    local = () => (performance.timeOrigin + performance.now()) / 1000,
  } = {}) {
    Object.assign(this, { window, maxAge, maxSlew, stepThreshold, settle, local });
    this.exchanges = [];
    this.estimate = null;
    this.error = Infinity;
    this.rtt = Infinity;
    this.delay = Infinity;
    this._from = 0;
    this._since = 0;
    this._to = 0;
    this._steered = false;
  }

  get synced() {
    return this.estimate !== null;
  }

  get samples() {
    return this.exchanges.length;
  }

  add(t0, t1, t2, t3) {
    const up = t1 - t0;
    const down = t3 - t2;
    const rtt = t3 - t0 - (t2 - t1);
    if (!(t3 >= t0 && t2 >= t1 && rtt >= 0)) return false;
    this.exchanges.push({ up, down, rtt, t3 });
    if (this.exchanges.length > this.window) this.exchanges.shift();
    while (this.exchanges.length && t3 - this.exchanges[0].t3 > this.maxAge) this.exchanges.shift();
    let minUp = Infinity;
    let minDown = Infinity;
    let minRtt = Infinity;
    for (const e of this.exchanges) {
      minUp = Math.min(minUp, e.up);
      minDown = Math.min(minDown, e.down);
      minRtt = Math.min(minRtt, e.rtt);
    }
    this.estimate = (minUp - minDown) / 2;
    this.error = (minUp + minDown) / 2;
    this.rtt = minRtt;
    // How late a message from the conductor can arrive: the 95th percentile of the latest legs.
    const downs = this.exchanges.slice(-64).map((e) => e.down).sort((a, b) => a - b);
    this.delay = Math.max(0, downs[Math.floor(0.95 * (downs.length - 1))] + this.estimate);
    this._steer(this.estimate, t3);
    return true;
  }

  _steer(target, at) {
    const current = this.offsetAt(at);
    const gap = Math.abs(target - current);
    // Step only when the applied offset is provably wrong (outside the bound), and either just
    // after joining or by a lot: after a long sleep, one slow exchange must not move a good offset.
    const wrong = gap > this.error;
    const step = !this._steered || (wrong && (this.samples <= this.settle || gap > this.stepThreshold));
    this._from = step ? target : current;
    this._steered = true;
    this._since = at;
    this._to = target;
  }

  offsetAt(localT) {
    const gap = this._to - this._from;
    const reach = this.maxSlew * Math.max(0, localT - this._since);
    return this._from + Math.max(-reach, Math.min(reach, gap));
  }

  get offset() {
    return this.offsetAt(this.local());
  }

  now() {
    const t = this.local();
    return t + this.offsetAt(t);
  }

  toLocal(conductorT) {
    return conductorT - this.offsetAt(this.local());
  }
}
