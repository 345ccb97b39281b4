// Joining a concert from a page: the token comes from the URL (?token=, for QR codes), then from
// this device's storage, then from a small form. A refused token is forgotten and asked again.

import { Conductor, overloadRetry } from "./conductor.js";

export function params() {
  return new URLSearchParams(location.search);
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

export async function join(auth, { open = false } = {}) {
  const key = `tutti-token-${auth.role}${auth.part ? `-${auth.part}` : ""}`; // a part may have its own token
  let token = params().get("token") ?? localStorage.getItem(key) ?? (open ? "" : await askToken(auth.role));
  for (;;) {
    const conductor = new Conductor({ auth: { ...auth, token } });
    const outcome = await new Promise((resolve) => {
      conductor.addEventListener("welcome", () => resolve("ok"), { once: true });
      conductor.addEventListener("refused", ({ detail }) => {
        if (detail.event === "connect") resolve(detail);
      });
    });
    if (outcome === "ok") {
      if (token) localStorage.setItem(key, token);
      return conductor;
    }
    conductor.close();
    if (outcome.code === "overloaded") {
      await new Promise((r) => setTimeout(r, overloadRetry() * 1000));
      continue;
    }
    localStorage.removeItem(key);
    if (outcome.code !== "bad_token") throw new Error(outcome.message);
    token = await askToken(auth.role, "That token was refused; try again");
  }
}

// Keeps the screen on where the browser allows it (a secure context is needed on iPads).
export async function keepAwake() {
  if (!("wakeLock" in navigator)) return;
  const lock = () => navigator.wakeLock.request("screen").catch(() => {});
  await lock();
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && lock());
}
