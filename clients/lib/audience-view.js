// The audience view: every part's timeline, stacked, read-only; fits a phone held either way. A
// part drawn by a sketch runs the same sketch in its row. It draws whatever `source` says the
// position is (a live conductor's synced clock, or a replay's audio): `source` has the
// Conductor's score, position(), now(), param(), playing() and problem().
import { drawPart, formatTime, sectionAt, wrapText } from "./score-view.js";
import { mountSketch } from "./sketch.js";

export async function showAudience(source, canvas, stage) {
  const score = source.score;
  const ctx = canvas.getContext("2d");
  // Each part keeps only its timeline layers, given the full width of its own row.
  const rows = score.parts.map((part) => ({
    ...part,
    layers: part.layers.filter((l) => l.type === "timeline").map((l) => ({ ...l, area: [0, 0.22, 1, 0.78] })),
  }));
  // The title and position on lines of their own, wrapped: a phone's width never cuts them.
  const heading = () => Math.min(110, Math.max(56, canvas.clientHeight * 0.12));
  const rowBox = (i) => {
    const head = heading();
    const rowHeight = (canvas.clientHeight - head) / rows.length;
    return { x: 0, y: head + i * rowHeight + rowHeight * 0.22, w: canvas.clientWidth, h: rowHeight * 0.78 - 4 };
  };
  for (const [i, part] of score.parts.entries()) {
    if (rows[i].layers.length) continue;
    for (const layer of part.layers.filter((l) => l.type === "sketch")) {
      await mountSketch(stage, layer, source, part, () => rowBox(i));
    }
  }
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
    const t = source.now();
    const pos = source.position(t);
    // What was drawn, and for which conductor time: a test (or a person in devtools) can read it.
    canvas.dataset.at = t;
    canvas.dataset.position = pos;
    const head = heading();
    const { current } = sectionAt(score, pos);
    ctx.fillStyle = "#e8e6e1";
    let size = Math.round(Math.min(28, head * 0.36));
    ctx.font = `600 ${size}px system-ui, sans-serif`;
    const title = wrapText(ctx, score.title, width - 24).slice(0, 2);
    while (size > 10 && title.some((l) => ctx.measureText(l).width > width - 24)) ctx.font = `600 ${--size}px system-ui, sans-serif`;
    title.forEach((line, k) => ctx.fillText(line, 12, size * (1.1 + k * 1.15)));
    ctx.fillStyle = "#aeb7c2";
    ctx.font = `${Math.round(size * 0.8)}px ui-monospace, monospace`;
    ctx.fillText(`${formatTime(pos)}${current ? " · " + (current.name ?? current.id) : ""}`, 12, Math.min(head - 8, size * (1.25 + title.length * 1.15)));
    const rowHeight = (height - head) / rows.length;
    rows.forEach((part, i) => {
      ctx.save();
      ctx.translate(0, head + i * rowHeight);
      drawPart(ctx, score, part, pos, width, rowHeight - 4);
      if (!part.layers.length && !score.parts[i].layers.some((l) => l.type === "sketch")) {
        ctx.fillStyle = "#7d8791";
        ctx.font = `italic ${Math.round(Math.min(15, rowHeight * 0.14))}px system-ui, sans-serif`;
        ctx.fillText("no score drawn for this part", 10, rowHeight * 0.5);
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
