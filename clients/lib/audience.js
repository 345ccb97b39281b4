// The audience view: every part's timeline, stacked, read-only; fits a phone held either way.
import { join } from "./join.js";
import { drawPart, formatTime, sectionAt } from "./score-view.js";

async function main() {
  const conductor = await join({ role: "audience", name: "audience" }, { open: true });
  window.tutti = conductor;
  const score = conductor.score;
  const canvas = document.getElementById("score");
  const ctx = canvas.getContext("2d");
  const banner = document.getElementById("banner");
  conductor.addEventListener("disconnected", () => banner.classList.add("show"));
  conductor.addEventListener("welcome", () => banner.classList.remove("show"));
  // Each part keeps only its timeline layers, given the full width of its own row.
  const rows = score.parts.map((part) => ({
    ...part,
    layers: part.layers.filter((l) => l.type === "timeline").map((l) => ({ ...l, area: [0, 0.22, 1, 0.78] })),
  }));
  function frame() {
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const pos = conductor.position();
    const head = Math.min(64, height * 0.12);
    const { current } = sectionAt(score, pos);
    ctx.fillStyle = "#e8e6e1";
    ctx.font = `600 ${Math.round(head * 0.45)}px system-ui, sans-serif`;
    ctx.fillText(`${score.title} · ${formatTime(pos)}${current ? " · " + (current.name ?? current.id) : ""}`, 12, head * 0.65);
    const rowHeight = (height - head) / rows.length;
    rows.forEach((part, i) => {
      ctx.save();
      ctx.translate(0, head + i * rowHeight);
      drawPart(ctx, score, part, pos, width, rowHeight - 4);
      if (!part.layers.length) {
        ctx.fillStyle = "#7d8791";
        ctx.font = `italic ${Math.round(Math.min(15, rowHeight * 0.14))}px system-ui, sans-serif`;
        ctx.fillText("drawn live by the performer's sketch", 10, rowHeight * 0.5);
      }
      ctx.fillStyle = part.color;
      ctx.font = `${Math.round(Math.min(16, rowHeight * 0.16))}px system-ui, sans-serif`;
      ctx.fillText(part.site ? `${part.name} — ${part.site}` : part.name, 10, rowHeight * 0.16);
      ctx.restore();
    });
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);
}

main();
