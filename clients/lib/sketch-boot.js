// The first script of a global-mode sketch's frame (see sketch.js, mountFrame): a classic script, so
// that `tutti` and a socket.io-style `io()` exist before the sketch's own top-level code runs and
// before p5 starts it. sketch-frame.js (a module, run before p5 starts) fills in the clock.
// The frame is sandboxed (an opaque origin): it reaches the performer's page only by messages.
(() => {
  const init = JSON.parse(document.getElementById("tutti-init").textContent);
  const post = (message) => parent.postMessage(message, "*");
  const listeners = new Map(); // event name -> functions
  const answers = new Map(); // id of a send -> its promise's resolve
  let sent = 0;
  const tutti = {
    part: init.part,
    score: init.score,
    version: init.version,
    get width() { return innerWidth; },
    get height() { return innerHeight; },
    // Until sketch-frame.js runs: the piece at its start. It replaces these before p5 calls setup().
    time: () => 0,
    now: () => 0,
    param: () => undefined,
    playing: () => false,
    section: () => ({ current: null, next: null, untilNext: null }),
    // An event to the other parts' sketches: `to` names parts (default: every part), `at` a score
    // time to fire it at. Resolves to the conductor's answer ({ok, t} or {ok: false, code, message}).
    send(name, data = null, { to, at } = {}) {
      sent += 1;
      post({ type: "send", id: sent, name, data, to, at });
      return new Promise((resolve) => answers.set(sent, resolve));
    },
    on(name, fn) {
      if (!listeners.has(name)) listeners.set(name, []);
      listeners.get(name).push(fn);
    },
    off(name, fn) {
      listeners.set(name, (listeners.get(name) ?? []).filter((f) => f !== fn && fn !== undefined));
    },
    // Used by sketch-frame.js.
    _fire(name, data, meta) {
      for (const fn of listeners.get(name) ?? []) fn(data, meta);
    },
    _answer(id, answer) {
      answers.get(id)?.(answer);
      answers.delete(id);
    },
  };
  window.tutti = tutti;

  // What openprocessing.org sketches do with socket.io, pointed at the conductor's sketch channel:
  // `io()` or `io.connect(url)` (the url is ignored), `socket.emit(name, data)` to every other
  // part's sketch, `socket.on(name, fn)`. A "connect" listener is called at once.
  const socket = {
    id: init.part.id,
    connected: true,
    emit(name, data) {
      tutti.send(name, data);
      return socket;
    },
    on(name, fn) {
      if (name === "connect") setTimeout(fn, 0);
      else tutti.on(name, fn);
      return socket;
    },
    off(name, fn) {
      tutti.off(name, fn);
      return socket;
    },
    disconnect() {
      return socket;
    },
  };
  socket.addEventListener = socket.on;
  window.io = Object.assign(() => socket, { connect: () => socket });

  // A sketch's error stops it, says so over its layer, and reaches the conductor's console.
  const fail = (message, line) => post({ type: "error", message: String(message).slice(0, 300), line });
  addEventListener("error", (e) => fail(e.error?.message ?? e.message, e.lineno));
  addEventListener("unhandledrejection", (e) => fail(e.reason?.message ?? e.reason));
  // Its frame rate, for the composer's page: p5's frame count, each second.
  let frames = 0;
  setInterval(() => {
    const count = window.frameCount ?? 0;
    post({ type: "stats", fps: count - frames });
    frames = count;
  }, 1000);
})();
