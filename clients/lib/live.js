// Controls that send while they move and otherwise follow their parameter: the console's sliders
// and a performer's faders, toggles and xy pads.

const NO_ANSWER = { ok: false, code: "no_answer", message: "no answer from the conductor" };

// Sends a moving control's values: at most one per display frame and at most one unanswered at a
// time. Values that come meanwhile replace each other and the newest goes once the answer is in, so
// the last value is always sent and a slow conductor is never sent a backlog.
export class LiveSender {
  constructor(send, { frame = (f) => requestAnimationFrame(f), onAnswer = () => {} } = {}) {
    Object.assign(this, { send, frame, onAnswer });
    this.value = undefined;
    this.waiting = false; // `value` is not sent yet
    this.inFlight = false;
    this.scheduled = false;
    this.until = -Infinity; // the conductor time the last accepted value takes effect
  }

  set(value) {
    this.value = value;
    this.waiting = true;
    this.schedule();
  }

  // A value not sent, not answered, or accepted but not yet in effect at conductor time `now`:
  // until then the parameter's value is not this control's latest.
  busy(now) {
    return this.waiting || this.inFlight || now < this.until;
  }

  schedule() {
    if (this.scheduled || this.inFlight || !this.waiting) return;
    this.scheduled = true;
    this.frame(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  async flush() {
    if (this.inFlight || !this.waiting) return;
    const value = this.value;
    this.waiting = false;
    this.inFlight = true;
    let answer;
    try {
      answer = (await this.send(value)) ?? NO_ANSWER;
    } catch {
      answer = NO_ANSWER; // a timeout, or a lost connection
    }
    this.inFlight = false;
    if (answer.ok && typeof answer.t === "number") this.until = Math.max(this.until, answer.t);
    this.onAnswer(answer, value);
    this.schedule();
  }
}

// A control element with its sender. It is held (not moved by incoming state) while a pointer is down
// on it, and while its own latest value is on its way, so that neither a drag nor the next touch jumps.
export class LiveControl {
  constructor(element, send, { releases = globalThis, ...options } = {}) {
    this.sender = new LiveSender(send, options);
    this.pointers = new Set(); // several fingers may be on one control
    element.addEventListener("pointerdown", (e) => this.pointers.add(e.pointerId));
    // Released anywhere: a finger may slide off the control before it lifts.
    const release = (e) => this.pointers.delete(e.pointerId);
    for (const type of ["pointerup", "pointercancel"]) releases.addEventListener(type, release, true);
  }

  set(value) {
    this.sender.set(value);
  }

  held(now) {
    return this.pointers.size > 0 || this.sender.busy(now);
  }
}

// A refusal as a person reads it: the conductor's message, else its code.
export function refusalText(answer) {
  return answer.ok ? "" : `refused: ${answer.message || answer.code}`;
}
