// The composer's page: every part side by side as its performers see it (each a performer view,
// joined as the composer, so the console does not count it as a performer), with each sketch's
// errors and frame rate (or that the conductor turned its sketches off), and the last live edit the conductor refused (`tutti serve --watch`).
import { join, params } from "./join.js";

const $ = (id) => document.getElementById(id);

async function main() {
  const conductor = await join({ role: "composer", name: "composer" });
  window.tutti = conductor;
  const token = params().get("token") ?? localStorage.getItem("tutti-token-composer") ?? "";
  $("title").textContent = `${conductor.score.title} — composer`;
  const tiles = conductor.score.parts.map((part) => {
    const tile = Object.assign(document.createElement("section"), { className: "tile" });
    tile.dataset.part = part.id;
    const title = Object.assign(document.createElement("h2"), { textContent: part.name });
    const screen = Object.assign(document.createElement("div"), { className: "screen" });
    const frame = document.createElement("iframe");
    frame.title = part.name;
    frame.src = `/perform?${new URLSearchParams({ part: part.id, as: "composer", token })}`;
    screen.append(frame);
    const status = Object.assign(document.createElement("div"), { className: "status" });
    tile.append(title, screen, status);
    $("parts").append(tile);
    new ResizeObserver(() => (frame.style.transform = `scale(${screen.clientWidth / 1024})`)).observe(screen);
    return { part, frame, status };
  });
  // Each sketch's state, read from its part's view (same origin) twice a second.
  setInterval(() => {
    for (const { part, frame, status } of tiles) {
      const sketches = frame.contentWindow?.tuttiView?.sketches ?? [];
      status.replaceChildren(
        ...sketches.map((s) => {
          const line = document.createElement("div");
          const src = s.holder?.dataset.src ?? "sketch";
          if (s.error) line.className = "error";
          line.textContent = s.error ? `${src}: stopped: ${s.error}` : `${src}: ${s.fps ?? "–"} frames/s`;
          return line;
        }),
      );
      const layers = part.layers.filter((l) => l.type === "sketch");
      const off = (conductor.state.rehearsal?.sketches_off ?? []).includes(part.id);
      if (off) status.textContent = "sketch off by the conductor";
      else if (!sketches.length) status.textContent = layers.length ? "starting…" : "no sketch";
    }
    $("version").textContent = conductor.version ? `score version ${conductor.version}` : "";
  }, 500);
  // The last edit refused, until a later one is taken.
  let refusedAt = 0;
  conductor.socket.on("clients", (feed) => {
    const last = (feed.recent ?? []).filter((r) => r.event === "watch").at(-1);
    if (last && last.t > refusedAt) {
      $("refused").textContent = `Edit refused: ${last.message}`;
      $("refused").hidden = false;
      refusedAt = last.t;
    }
  });
  conductor.addEventListener("score", () => ($("refused").hidden = true));
}

main();
