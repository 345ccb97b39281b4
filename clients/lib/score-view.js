// Draws a part's graphic layers at a score position. Pure drawing: callers give the position,
// read every frame from the synced conductor clock, never from message arrival.

const DEFAULT_AREAS = {
  timeline: [0, 0.15, 1, 0.7],
  text: [0, 0.85, 1, 0.15],
  countdown: [0.75, 0, 0.25, 0.15],
  sketch: [0, 0, 1, 1],
};

export function areaOf(layer, width, height) {
  const [x, y, w, h] = layer.area ?? DEFAULT_AREAS[layer.type];
  return { x: x * width, y: y * height, w: w * width, h: h * height };
}

export function sectionAt(score, pos) {
  let current = null;
  let next = null;
  for (const s of score.sections) {
    if (s.start <= pos) current = s;
    else if (!next) next = s;
  }
  return { current, next, untilNext: next ? next.start - pos : null };
}

export function formatTime(seconds) {
  const s = Math.max(0, seconds);
  return `${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, "0")}`;
}

function drawTimeline(ctx, layer, part, score, pos, box) {
  const { x, y, w, h } = box;
  const scale = w / layer.window;
  const head = x + layer.playhead * w;
  const X = (t) => head + (t - pos) * scale;
  const Y = (v) => y + v * h;
  ctx.save();
  ctx.beginPath();
  ctx.rect(x, y, w, h);
  ctx.clip();
  ctx.fillStyle = "#161b21";
  ctx.fillRect(x, y, w, h);
  // Beat grid: bars stronger than beats, from the score's tempo.
  const beat = 60 / score.tempo.bpm;
  const first = Math.floor((pos - layer.playhead * layer.window) / beat);
  const last = Math.ceil((pos + layer.window) / beat);
  for (let b = Math.max(0, first); b <= last; b++) {
    const bx = X(b * beat);
    const bar = b % score.tempo.beats_per_bar === 0;
    ctx.strokeStyle = bar ? "#2c3640" : "#1e252c";
    ctx.lineWidth = bar ? 1.5 : 1;
    ctx.beginPath();
    ctx.moveTo(bx, y);
    ctx.lineTo(bx, y + h);
    ctx.stroke();
  }
  for (const s of score.sections) {
    const sx = X(s.start);
    ctx.strokeStyle = "#8a94a0";
    ctx.setLineDash([6, 6]);
    ctx.beginPath();
    ctx.moveTo(sx, y);
    ctx.lineTo(sx, y + h);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#aeb7c2";
    ctx.font = `${Math.round(h * 0.045 + 8)}px system-ui, sans-serif`;
    ctx.fillText(s.name ?? s.id, sx + 6, y + h * 0.06 + 8);
  }
  for (const shape of layer.shapes) {
    const color = shape.color ?? part.color;
    const x0 = X(shape.start);
    const x1 = shape.end == null ? x0 : X(shape.end);
    if (x1 < x - 50 || x0 > x + w + 50) continue;
    ctx.strokeStyle = ctx.fillStyle = color;
    ctx.lineWidth = Math.max(2, h * 0.012);
    const thick = shape.height * h;
    switch (shape.shape) {
      case "bar":
        ctx.globalAlpha = 0.85;
        ctx.fillRect(x0, Y(shape.y) - thick / 2, x1 - x0, thick);
        ctx.globalAlpha = 1;
        break;
      case "line":
        ctx.beginPath();
        ctx.moveTo(x0, Y(shape.y));
        ctx.lineTo(x1, Y(shape.to_y ?? shape.y));
        ctx.stroke();
        break;
      case "wave": {
        ctx.beginPath();
        const steps = Math.max(16, Math.ceil((x1 - x0) / 3));
        for (let i = 0; i <= steps; i++) {
          const f = i / steps;
          const wy = Y(shape.y) + Math.sin(f * shape.cycles * 2 * Math.PI) * (thick / 2);
          if (i === 0) ctx.moveTo(x0, wy);
          else ctx.lineTo(x0 + f * (x1 - x0), wy);
        }
        ctx.stroke();
        break;
      }
      case "dot":
        ctx.beginPath();
        ctx.arc(x0, Y(shape.y), thick / 2, 0, 2 * Math.PI);
        ctx.fill();
        break;
      case "label":
        break;
    }
    if (shape.text) {
      ctx.fillStyle = "#e8e6e1";
      ctx.font = `${shape.shape === "label" ? "italic 600 " : ""}${Math.round(h * 0.05 + 8)}px Georgia, serif`;
      const ty = shape.shape === "label" ? Y(shape.y) : Y(shape.y) - thick / 2 - 8;
      ctx.fillText(shape.text, x0 + (shape.shape === "label" ? -4 : 4), ty);
    }
  }
  // What has passed is dimmed; the playhead is fixed.
  ctx.fillStyle = "rgba(16, 20, 24, 0.55)";
  ctx.fillRect(x, y, head - x, h);
  ctx.strokeStyle = "#f2c14e";
  ctx.lineWidth = 3;
  ctx.beginPath();
  ctx.moveTo(head, y);
  ctx.lineTo(head, y + h);
  ctx.stroke();
  ctx.restore();
}

function drawText(ctx, layer, pos, box) {
  const items = layer.items.filter((i) => i.start <= pos && pos < i.end);
  ctx.save();
  ctx.fillStyle = "#e8e6e1";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  items.forEach((item, n) => {
    ctx.font = `${Math.round(item.size * ctx.canvas.clientHeight)}px Georgia, serif`;
    ctx.fillText(item.text, box.x + box.w / 2, box.y + ((n + 0.5) * box.h) / items.length, box.w * 0.95);
  });
  ctx.restore();
}

function drawCountdown(ctx, layer, score, pos, box) {
  const { current, next, untilNext } = sectionAt(score, pos);
  ctx.save();
  ctx.textAlign = "right";
  ctx.textBaseline = "top";
  const size = Math.min(box.h * 0.32, box.w * 0.12);
  ctx.fillStyle = "#aeb7c2";
  ctx.font = `${Math.round(size)}px system-ui, sans-serif`;
  ctx.fillText(current ? current.name ?? current.id : "", box.x + box.w - 12, box.y + 10);
  if (next && untilNext <= layer.warn) {
    ctx.fillStyle = untilNext <= 3 ? "#f2c14e" : "#e8e6e1";
    ctx.font = `600 ${Math.round(size * 1.6)}px ui-monospace, monospace`;
    ctx.fillText(`${Math.ceil(untilNext)}`, box.x + box.w - 12, box.y + 14 + size);
    ctx.font = `${Math.round(size * 0.8)}px system-ui, sans-serif`;
    ctx.fillText(`→ ${next.name ?? next.id}`, box.x + box.w - 12, box.y + 20 + size * 2.7);
  }
  ctx.restore();
}

// Draws every non-sketch layer of `part` into `ctx` (sized in CSS pixels `width` x `height`).
export function drawPart(ctx, score, part, pos, width, height) {
  for (const layer of part.layers) {
    const box = areaOf(layer, width, height);
    if (layer.type === "timeline") drawTimeline(ctx, layer, part, score, pos, box);
    else if (layer.type === "text") drawText(ctx, layer, pos, box);
    else if (layer.type === "countdown") drawCountdown(ctx, layer, score, pos, box);
  }
}
