// Each audio link, each way: the figures the conductor keeps once a second (conductor/server/linkmetrics.py),
// a table and a plot per link over the last minutes and over the whole concert.
import { fitted } from "./plotcanvas.js";

const H = 96; // CSS pixels high; as wide as the page gives it
const TOP = 36; // below the two lines of text
const COLOURS = { a_to_b: "#5fa8d3", b_to_a: "#e9c46a", half: "#6c757d" };
const num = (v, plus = false) => (v == null ? "–" : plus && v >= 0 ? `+${v.toFixed(2)}` : v.toFixed(2));

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// The queue each direction needs to hold its measured delays, and what it costs: one period per packet.
function queueText(r) {
  const q = (w) => (r[`queue_${w}`] == null ? "–" : `${r[`queue_${w}`]} (${r[`queue_${w}_ms`].toFixed(1)} ms)`);
  return `${q("a_to_b")} · ${q("b_to_a")}`;
}

function tableRows(rows) {
  return rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.link = r.link;
    tr.append(
      cell(`${r.link} (${r.state})`, r.state === "connected" ? "" : "stale"),
      cell(num(r.a_to_b_ms), "num"), cell(num(r.b_to_a_ms), "num"), cell(num(r.bound_ms), "num"),
      cell(num(r.jitter_a_to_b_ms), "num"), cell(num(r.jitter_b_to_a_ms), "num"), cell(num(r.rtt_ms), "num"),
      cell(num(r.check_ms, true), r.check_ok === false ? "num stale" : "num"),
      cell(`${r.lost ?? 0} · ${r.underruns ?? 0} · ${r.overflows ?? 0}`, r.lost ? "num stale" : "num"),
      cell(queueText(r)),
    );
    return tr;
  });
}

// One plot: both ways, and half the round trip (grey) for comparison, against time.
function draw(canvas, points, label, row) {
  const { g, width: W } = fitted(canvas, H);
  const values = points.flatMap((p) => [p[1], p[2], p[3] == null ? null : p[3] / 2]).filter((v) => v != null);
  g.fillStyle = "#aeb7c2";
  g.font = "12px system-ui";
  if (points.length < 2 || !values.length) {
    g.fillText(`${label}: waiting for measurements`, 6, 14);
    return;
  }
  const top = Math.max(1, ...values) * 1.15;
  const t0 = points[0][0];
  const span = Math.max(1, points.at(-1)[0] - t0);
  for (const [key, index, scale] of [["half", 3, 0.5], ["a_to_b", 1, 1], ["b_to_a", 2, 1]]) {
    g.strokeStyle = COLOURS[key];
    g.beginPath();
    let drawing = false;
    for (const p of points) {
      if (p[index] == null) { drawing = false; continue; }
      const x = ((p[0] - t0) / span) * (W - 4) + 2;
      const y = H - 3 - ((p[index] * scale) / top) * (H - TOP);
      if (drawing) g.lineTo(x, y);
      else g.moveTo(x, y);
      drawing = true;
    }
    g.stroke();
  }
  g.fillStyle = "#aeb7c2";
  g.fillText(`${label}: ${Math.max(1, Math.round(span / 60))} min, top ${top.toFixed(1)} ms`, 6, 14);
  let x = 6;
  for (const [key, text] of [["a_to_b", `${row.a}→${row.b} ${num(row.a_to_b_ms)} ms`],
    ["b_to_a", `${row.b}→${row.a} ${num(row.b_to_a_ms)} ms`], ["half", "½ round trip"]]) {
    g.fillStyle = COLOURS[key];
    g.fillText(text, x, 30);
    x += g.measureText(text).width + 14;
  }
}

function canvasFor(box, link, which) {
  let canvas = box.querySelector(`canvas[data-link="${CSS.escape(link)}"][data-which="${which}"]`);
  if (!canvas) {
    canvas = document.createElement("canvas");
    canvas.style.height = `${H}px`; // the page's other plots are shorter
    canvas.dataset.link = link;
    canvas.dataset.which = which;
    box.append(canvas);
  }
  return canvas;
}

// The feed's ``links``: {rows, recent: {link: [[t, a_to_b, b_to_a, rtt]]}, concert: {...}}.
// `ends`: how many JackTrip ends the nodes run (none: the concert has no audio links).
export function showLinks(links, table, plots, hint, ends) {
  links ??= {}; // a conductor without a journal keeps no link figures: none to show
  const rows = links.rows ?? [];
  table.replaceChildren(...tableRows(rows));
  table.closest(".wide-table")?.classList.toggle("hidden", !rows.length);
  const none = ends ? "No link measured yet: each end measures both ways within seconds of connecting. " : "None. ";
  hint.textContent = (rows.length ? "" : none) +
    (links.unwritten ? `${links.unwritten} seconds of figures could not be written to ${links.file}: check the disk.` : "");
  for (const row of rows) {
    draw(canvasFor(plots, row.link, "recent"), links.recent?.[row.link] ?? [], `${row.link}, last minutes`, row);
    draw(canvasFor(plots, row.link, "concert"), links.concert?.[row.link] ?? [], `${row.link}, whole concert`, row);
  }
}
