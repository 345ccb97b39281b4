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

// A score position as bar and beat on the score's grid, both counted from 1 ("13.2").
export function barBeat(score, seconds) {
  const beats = Math.floor(Math.max(0, seconds) / (60 / score.tempo.bpm) + 1e-6);
  const perBar = score.tempo.beats_per_bar;
  return `${Math.floor(beats / perBar) + 1}.${(beats % perBar) + 1}`;
}

// A loop in words: its bars (or span of bars) and which pass is playing ("" for none).
export function loopText(score, loop) {
  if (!loop) return "";
  const bar = (60 / score.tempo.bpm) * score.tempo.beats_per_bar;
  const first = Math.floor(loop.start / bar + 1e-6) + 1;
  const last = Math.ceil(loop.end / bar - 1e-6);
  const bars = first === last ? `bar ${first}` : `bars ${first}–${last}`;
  return `⟲ ${bars} · pass ${loop.passes}${loop.times ? ` of ${loop.times}` : ""}`;
}

// Words broken into lines no wider than `width` at the context's font.
export function wrapText(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    const tried = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(tried).width > width) {
      lines.push(line);
      line = word;
    } else line = tried;
  }
  if (line) lines.push(line);
  return lines;
}

// The largest font size (up to `size`) at which `lines` of text fit `width`, at least `least`.
function fitSize(ctx, font, lines, size, width, least = 8) {
  for (; size > least; size -= 1) {
    ctx.font = font(size);
    if (lines.every((l) => ctx.measureText(l).width <= width)) break;
  }
  ctx.font = font(size);
  return size;
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
  const last = Math.min(Math.ceil((pos + layer.window) / beat), Math.floor(score.duration / beat + 1e-6));
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
  // The end of the piece: nothing is drawn after it.
  const ex = X(score.duration);
  if (ex < x + w) {
    ctx.fillStyle = "#0c0f12";
    ctx.fillRect(ex, y, x + w - ex, h);
    vertical(ctx, ex, y, h, "#e8e6e1", 4);
    ctx.fillStyle = "#aeb7c2";
    ctx.font = `600 ${Math.round(h * 0.05 + 10)}px system-ui, sans-serif`;
    ctx.fillText("end", ex + 10, y + h * 0.06 + 8); // at the top, with the sections' names

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
      // A held shape keeps its caption in view while it lasts: once its start has scrolled past
      // the left edge, the caption rides along the edge until the shape's end pushes it off.
      const width = ctx.measureText(shape.text).width;
      const tx = shape.shape === "label" ? x0 - 4 : Math.min(Math.max(x0 + 4, x + 8), Math.max(x0 + 4, x1 - width - 4));
      ctx.fillText(shape.text, tx, ty);
    }
  }
  // What has passed is dimmed; the playhead is fixed.
  ctx.fillStyle = "rgba(16, 20, 24, 0.55)";
  ctx.fillRect(x, y, head - x, h);
  vertical(ctx, head, y, h, "#f2c14e", 3);
  ctx.restore();
}

function vertical(ctx, x, y, h, color, width) {
  ctx.strokeStyle = color;
  ctx.lineWidth = width;
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x, y + h);
  ctx.stroke();
}

// Text items showing now, each wrapped to the layer's width (never squeezed), at its size (a
// fraction of the score area's height) or smaller if its lines would not fit the layer.
function drawText(ctx, layer, pos, box, viewHeight) {
  const items = layer.items.filter((i) => i.start <= pos && pos < i.end);
  ctx.save();
  ctx.beginPath();
  ctx.rect(box.x, box.y, box.w, box.h);
  ctx.clip();
  ctx.fillStyle = "#e8e6e1";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  const slot = box.h / Math.max(1, items.length);
  items.forEach((item, n) => {
    let size = Math.max(10, Math.round(item.size * viewHeight));
    let lines;
    for (;;) {
      ctx.font = `${size}px Georgia, serif`;
      lines = wrapText(ctx, item.text, box.w * 0.95);
      const fits = lines.length * size * 1.2 <= slot && lines.every((l) => ctx.measureText(l).width <= box.w * 0.95);
      if (fits || size <= 10) break;
      size -= 1;
    }
    const top = box.y + n * slot + slot / 2 - ((lines.length - 1) * size * 1.2) / 2;
    lines.forEach((line, k) => ctx.fillText(line, box.x + box.w / 2, top + k * size * 1.2));
  });
  ctx.restore();
}

// The current section, and near the next one a count of seconds and its name: all inside the
// layer's box (the lines shrink to fit it), never over the timeline below.
function drawCountdown(ctx, layer, score, pos, box) {
  const { current, next, untilNext } = sectionAt(score, pos);
  ctx.save();
  ctx.beginPath();
  ctx.rect(box.x, box.y, box.w, box.h);
  ctx.clip();
  ctx.textAlign = "right";
  ctx.textBaseline = "top";
  const right = box.x + box.w - 8;
  const inner = box.w - 16;
  const counting = next && untilNext <= layer.warn;
  // Three lines when counting (name, seconds at twice the size, next), else one.
  let size = counting ? (box.h - 8) / 4.4 : Math.min(box.h * 0.4, 28);
  const name = current ? current.name ?? current.id : "";
  size = fitSize(ctx, (s) => `${s}px system-ui, sans-serif`, [name], Math.floor(size), inner);
  ctx.fillStyle = "#aeb7c2";
  ctx.fillText(name, right, box.y + 4);
  if (counting) {
    ctx.fillStyle = untilNext <= 3 ? "#f2c14e" : "#e8e6e1";
    ctx.font = `600 ${Math.round(size * 2)}px ui-monospace, monospace`;
    ctx.fillText(`${Math.ceil(untilNext)}`, right, box.y + 4 + size * 1.1);
    const upcoming = `→ ${next.name ?? next.id}`;
    const small = fitSize(ctx, (s) => `${s}px system-ui, sans-serif`, [upcoming], Math.floor(size), inner);
    ctx.fillText(upcoming, right, box.y + 4 + size * 3.3 + (size - small) / 2);
  }
  ctx.restore();
}

// Draws every non-sketch layer of `part` into `ctx` (sized in CSS pixels `width` x `height`).
export function drawPart(ctx, score, part, pos, width, height) {
  for (const layer of part.layers) {
    const box = areaOf(layer, width, height);
    if (layer.type === "timeline") drawTimeline(ctx, layer, part, score, pos, box);
    else if (layer.type === "text") drawText(ctx, layer, pos, box, height);
    else if (layer.type === "countdown") drawCountdown(ctx, layer, score, pos, box);
  }
}

// A position as a conductor types it: a bar ("b13", "b13.3", bars and beats from 1), minutes and
// seconds ("1:30") or seconds ("90", "12.5"). "1.30" could mean either a minute and a half or
// 1.3 s, so it is refused with both readings rather than guessed. Returns { seconds } or { error }.
export function parsePosition(score, text) {
  const t = text.trim().toLowerCase();
  const { bpm, beats_per_bar: perBar } = score.tempo;
  let seconds;
  let m;
  if ((m = t.match(/^b(?:ar)?\s*(\d+)(?:\.(\d+))?$/))) {
    const [bar, beat] = [Number(m[1]), Number(m[2] ?? 1)];
    if (bar < 1 || beat < 1 || beat > perBar) return { error: `bars count from 1 and beats from 1 to ${perBar}` };
    seconds = ((bar - 1) * perBar + beat - 1) * (60 / bpm);
  } else if ((m = t.match(/^(\d+):([0-5]?\d(?:\.\d+)?)$/))) {
    seconds = Number(m[1]) * 60 + Number(m[2]);
  } else if ((m = t.match(/^(\d+)\.(\d\d)$/)) && Number(m[2]) < 60) {
    return { error: `“${t}” could be minutes or seconds: write ${m[1]}:${m[2]} or ${Number(t)}` };
  } else if (/^\d+(\.\d+)?$/.test(t)) {
    seconds = Number(t);
  } else {
    return { error: "write a bar (b13 or b13.2), minutes and seconds (1:30) or seconds (90)" };
  }
  if (seconds > score.duration) return { error: `${formatTime(seconds)} is past the end of the piece (${formatTime(score.duration)})` };
  return { seconds };
}
