// Joining a concert from a page: the token comes from the URL (?token=, for QR codes), then from
// this device's storage, then from a small form. A refused token is forgotten and asked again.
// Every other refusal is shown on the page in words, with what to do, and retried where waiting
// helps (too many failed joins, an overloaded conductor, a conductor that cannot be reached).

import { Conductor, overloadRetry } from "./conductor.js";

export function params() {
  return new URLSearchParams(location.search);
}

const UNREACHABLE_AFTER = 4; // seconds without a welcome before the page says it cannot reach the conductor
const RATE_LIMIT_WAIT = 31; // seconds: the conductor bars an address for 30 s after ten failed joins
const INTERNAL_RETRY = 5;

// A full-page notice: what happened, what to do, and (when retrying) a countdown. One at a time.
export function showNotice({ title, message, action = "", retryIn = null, links = [] }) {
  let box = document.getElementById("notice");
  if (!box) {
    box = Object.assign(document.createElement("div"), { id: "notice", className: "notice" });
    box.setAttribute("role", "alert");
    document.body.append(box);
  }
  box.replaceChildren();
  const add = (tag, text, cls) => {
    const el = Object.assign(document.createElement(tag), { textContent: text });
    if (cls) el.className = cls;
    box.append(el);
    return el;
  };
  add("h1", title);
  if (message) add("p", message, "why");
  if (action) add("p", action, "todo");
  for (const [text, href] of links) {
    const a = Object.assign(document.createElement("a"), { textContent: text, href });
    box.append(a);
  }
  clearInterval(box.timer);
  if (retryIn != null) {
    const line = add("p", "", "retry");
    const until = Date.now() + retryIn * 1000;
    const tick = () => (line.textContent = `Trying again in ${Math.max(0, Math.ceil((until - Date.now()) / 1000))} s…`);
    tick();
    box.timer = setInterval(tick, 250);
  }
  return box;
}

export function hideNotice() {
  const box = document.getElementById("notice");
  if (box) {
    clearInterval(box.timer);
    box.remove();
  }
}

function askToken(role, message) {
  return new Promise((resolve) => {
    const form = document.createElement("form");
    form.className = "token-form";
    form.innerHTML = `<p></p><input type="password" autocomplete="current-password" placeholder="concert token"><button>Join</button>`;
    form.querySelector("p").textContent = message ?? `Token for the ${role} role`;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const token = form.querySelector("input").value.trim();
      form.remove();
      resolve(token);
    });
    document.body.append(form);
    form.querySelector("input").focus();
  });
}

const wait = (seconds) => new Promise((r) => setTimeout(r, seconds * 1000));

// How a refused join is shown, and after how many seconds it is tried again (null: not by itself).
export function explain(outcome, auth) {
  switch (outcome.code) {
    case "rate_limited":
      return [{ title: "Too many tries from this device", message: outcome.message,
        action: "The conductor refuses joins from here for a short while after ten wrong tokens. Check the link or QR code with the conductor." }, RATE_LIMIT_WAIT];
    case "overloaded":
      return [{ title: "The conductor is busy", message: outcome.message,
        action: "Places in the audience are freed for the performers while it catches up. This page comes back by itself." }, overloadRetry()];
    case "unknown_part": {
      const picker = new URLSearchParams(params());
      picker.delete("part");
      return [{ title: `There is no part “${auth.part ?? ""}” in this piece`, message: outcome.message,
        action: "Ask the conductor for your part's link or QR code, or choose your part:",
        links: [["Choose your part", `${location.pathname}?${picker}`]] }, null];
    }
    case "internal":
      return [{ title: "The conductor could not let you in", message: outcome.message, action: "It may be starting up." }, INTERNAL_RETRY];
    default:
      return [{ title: "The conductor refused this page", message: outcome.message ?? outcome.code,
        action: "Check the link with the conductor, then reload." }, null];
  }
}

export async function join(auth, { open = false } = {}) {
  const key = `tutti-token-${auth.role}${auth.part ? `-${auth.part}` : ""}`; // a part may have its own token
  let token = params().get("token") ?? localStorage.getItem(key) ?? (open ? "" : await askToken(auth.role));
  for (;;) {
    const conductor = new Conductor({ auth: { ...auth, token } });
    const unreachable = setTimeout(() => showNotice({
      title: "Cannot reach the conductor",
      message: `No answer from ${location.host}.`,
      action: "Check that this device is on the concert's network and the conductor is running. This page keeps trying.",
    }), UNREACHABLE_AFTER * 1000);
    const outcome = await new Promise((resolve) => {
      conductor.addEventListener("welcome", () => resolve("ok"), { once: true });
      conductor.addEventListener("refused", ({ detail }) => {
        if (detail.event === "connect") resolve(detail);
      });
    });
    clearTimeout(unreachable);
    if (outcome === "ok") {
      hideNotice();
      if (token) localStorage.setItem(key, token);
      return conductor;
    }
    conductor.close();
    if (outcome.code === "bad_token") {
      hideNotice();
      localStorage.removeItem(key);
      token = await askToken(auth.role, "That token was refused; try again");
      continue;
    }
    const [notice, retryIn] = explain(outcome, auth);
    showNotice({ ...notice, retryIn });
    if (retryIn == null) return new Promise(() => {}); // nothing to do but what the notice says
    await wait(retryIn);
  }
}

// Keeps the screen on where the browser allows it (a secure context is needed on iPads).
export async function keepAwake() {
  if (!("wakeLock" in navigator)) return;
  const lock = () => navigator.wakeLock.request("screen").catch(() => {});
  await lock();
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && lock());
}

// What a page shows while the connection is down, or after an overloaded conductor let it go.
export function followConnection(conductor, banner) {
  conductor.addEventListener("disconnected", () => {
    if (!conductor.letGo) banner.textContent = "Disconnected from the conductor — reconnecting…";
    banner.classList.add("show");
  });
  conductor.addEventListener("refused", ({ detail }) => {
    if (detail.code !== "overloaded") return;
    banner.textContent = "The conductor is busy and let this page go for a while; it comes back by itself.";
    banner.classList.add("show");
  });
  conductor.addEventListener("welcome", () => banner.classList.remove("show"));
}
