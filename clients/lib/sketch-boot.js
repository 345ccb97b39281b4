// The first script of a global-mode sketch's frame (see sketch.js, prepareFrame): a classic script,
// so that `tutti` and a socket.io-style `io()` exist before the sketch's own top-level code runs and
// before p5 starts it. sketch-frame.js (a module, run before p5 starts) fills in the clock.
// The frame is sandboxed (an opaque origin): it reaches the performer's page only by messages.
// `tuttiRun()` runs the sketch once p5 is loaded: its loops guarded (a loop that runs on for
// LOOP_LIMIT seconds throws), since a frame may share the page's thread (it does unless the browser
// gives it a process of its own), and a loop without end there would stop the whole view.
(() => {
  const LOOP_LIMIT = globalThis.tuttiLoopLimit ?? 1; // seconds
  const init = JSON.parse(document.getElementById("tutti-init").textContent);
  const post = (message) => parent.postMessage(message, "*");
  const listeners = new Map(); // event name -> functions
  const answers = new Map(); // id of a send -> its promise's resolve
  let sent = 0;
  const tutti = {
    part: init.part,
    score: init.score,
    version: "", // of the sketch's file, given with it
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

  // A sketch's error stops it, says so over its layer, and reaches the conductor's console with the
  // sketch file's line.
  const lineOf = (error) => Number(String(error?.stack ?? "").match(/tutti-sketch:(\d+)/)?.[1]) || 0;
  let failed = false;
  const fail = (error) => {
    failed = true;
    try {
      window.noLoop?.();
    } catch {
      // p5 not started yet
    }
    post({ type: "error", message: String(error?.message ?? error).slice(0, 300), line: lineOf(error) });
  };
  addEventListener("error", (e) => fail(e.error ?? e.message));
  addEventListener("unhandledrejection", (e) => fail(e.reason));

  // Checked in every loop body, every 1024 turns: the time since the guard was first reached in this
  // task. A microtask clears it once the task's code has returned, which a loop without end never does.
  let turns = 0;
  let since = null;
  window.__tuttiLoop = () => {
    if ((++turns & 1023) !== 0) return;
    const t = performance.now();
    if (since === null) {
      since = t;
      queueMicrotask(() => (since = null));
    } else if (t - since > LOOP_LIMIT * 1000) {
      throw new Error(`a loop ran on for ${LOOP_LIMIT} s: stopped (does a while or for loop ever end?)`);
    }
  };
  const LOOPS = new Set(["WhileStatement", "DoWhileStatement", "ForStatement", "ForInStatement", "ForOfStatement"]);
  function guarded(source) {
    const inserts = []; // [position, text]; no newline added: the sketch's line numbers stay
    const visit = (node) => {
      if (!node || typeof node.type !== "string") return;
      if (LOOPS.has(node.type)) {
        const body = node.body;
        if (body.type === "BlockStatement") inserts.push([body.start + 1, "__tuttiLoop();"]);
        else inserts.push([body.start, "{__tuttiLoop();"], [body.end, "}"]);
      }
      for (const value of Object.values(node)) {
        if (Array.isArray(value)) value.forEach(visit);
        else if (value && typeof value === "object") visit(value);
      }
    };
    visit(acorn.parse(source, { ecmaVersion: "latest", sourceType: "script", allowHashBang: true, allowReturnOutsideFunction: true }));
    inserts.sort((a, b) => b[0] - a[0]);
    let out = source;
    for (const [at, text] of inserts) out = out.slice(0, at) + text + out.slice(at);
    return out;
  }

  // Its frame rate, for the composer's page: p5's frame count, each second.
  let frames = 0;
  setInterval(() => {
    const count = window.frameCount ?? 0;
    post({ type: "stats", fps: count - frames });
    frames = count;
  }, 1000);
  // A frame may share the page's process: one that allocates without end would take the page down
  // with it. Past half the heap's limit (or `init.memory` bytes), it stops and the page removes it.
  const memoryCheck = setInterval(() => {
    const memory = performance.memory;
    if (!memory || memory.usedJSHeapSize <= (init.memory ?? memory.jsHeapSizeLimit / 2)) return;
    clearInterval(memoryCheck);
    try {
      window.noLoop?.();
    } catch {
      // p5 not started yet
    }
    post({ type: "memory", used: memory.usedJSHeapSize });
  }, 100);

  // Runs the sketch sent to this frame (it waits, with p5 loaded, until then): as a <script> of the
  // frame's (top-level functions and variables global, for p5 to find), then p5 in global mode, as p5
  // itself would start it on load. Says "running" once the sketch has drawn (or has no draw).
  let started = false;
  window.tuttiRun = ({ source, score, version }) => {
    if (started) return; // a frame runs one sketch: the next version gets a frame of its own
    started = true;
    Object.assign(tutti, { score, version });
    const script = document.createElement("script");
    try {
      script.textContent = `${guarded(source)}\n//# sourceURL=tutti-sketch`;
    } catch (error) {
      post({ type: "error", message: `does not parse: ${error.message}`, line: error.loc?.line ?? 0 });
      return;
    }
    document.body.append(script);
    const hooks = typeof window.setup === "function" || typeof window.draw === "function";
    if (hooks && !window.p5?.instance) {
      try {
        new window.p5();
      } catch (error) {
        fail(error);
        return;
      }
    }
    const drawn = () => {
      if (failed) return; // said so already
      if (typeof window.draw !== "function" || (window.frameCount ?? 0) > 0) post({ type: "running" });
      else requestAnimationFrame(drawn);
    };
    drawn();
  };
})();
