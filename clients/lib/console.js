// The conductor's console: runs the transport and shows every client, its clock and the refusals.
import { join } from "./join.js";
import { showLinks } from "./linkplots.js";
import { LiveControl, refusalText } from "./live.js";
import { fitted } from "./plotcanvas.js";
import { barBeat, formatTime, loopText, parsePosition, sectionAt } from "./score-view.js";

const $ = (id) => document.getElementById(id);
// Milliseconds to two places; a value that rounds to zero reads 0.00, not -0.00.
const ms = (s) => (s == null ? "–" : (s * 1000).toFixed(2).replace(/^-(0\.00)$/, "$1"));
const LOOPBACK = /^(127\.|localhost$|\[::1\]$|::1$)/;
const PHASES = { waiting: "waiting for the downbeat", "count-in": "count-in", playing: "playing", paused: "paused", ended: "ended" };

// On a phone each table row is a card (console.html): every cell says which column it is, from
// its table's header, whoever fills the table and whenever.
function labelCells(table) {
  const names = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
  const label = () => {
    for (const tr of table.tBodies[0]?.rows ?? []) [...tr.cells].forEach((td, i) => (td.dataset.label = names[i] ?? ""));
  };
  new MutationObserver(label).observe(table.tBodies[0], { childList: true });
  label();
}
document.querySelectorAll(".wide-table table").forEach(labelCells);

// A node's scsynth at a glance: a crashed or late one must stand out.
function soundOf(client) {
  const h = client.health;
  if (!h) return [client.role === "node" ? "no report yet" : ""];
  if (!h.up) return [`scsynth DOWN (${h.restarts} restarts) ${h.last_error ?? ""}`, "stale"];
  // What the node adds to scsynth's timetags for where scsynth places them (its timing mark).
  const placed = h.placement_ms == null ? "" : ` · placement ${h.placement_ms >= 0 ? "+" : ""}${h.placement_ms.toFixed(2)} ms`;
  let text = `scsynth up · cpu ${h.cpu_avg}% · ${h.synths} synths · ${h.cues} cues${placed}${linkOf(h.link)}`;
  if (h.late || h.cues_late) text += ` · ${h.late + h.cues_late} late`;
  // scsynth's own refusals (a SynthDef it does not have, a node ID in use): the sound did not play.
  if (h.failures) text += ` · ${h.failures} refused by scsynth: ${h.last_error ?? ""}`;
  const off = h.link && (Math.abs(h.link.phase_error_ms) > 1 || h.link.late);
  return h.late || h.cues_late || h.failures || off ? [text, "stale"] : [text];
}

// The node's Ableton Link session: its tempo, the other peers in it (sclang, apps) and its phase error.
function linkOf(link) {
  if (!link) return "";
  const peers = `${link.peers} peer${link.peers === 1 ? "" : "s"}`;
  return ` · Link ${link.tempo.toFixed(2)} bpm, ${peers}, phase ${link.phase_error_ms.toFixed(2)} ms`;
}

// Every JackTrip end the nodes run: a link that is not connected, or that drops audio, stands out.
function linkRows(clients) {
  const rows = [];
  for (const c of clients) {
    for (const l of c.health?.links ?? []) {
      const end = l.role === "hub" ? `hub (${l.peers} joined)` : `${l.role} of ${l.peer}`;
      const cells = [[l.site], [end], [c.name], [`${l.state} ${Math.round(l.for_s ?? 0)} s`, l.state === "connected" ? "" : "stale"],
        [l.latency_ms == null ? "–" : l.latency_ms.toFixed(2), "num"], [String(l.underruns ?? 0), "num"],
        [String(l.overflows ?? 0), "num"], [String(l.lost ?? 0), l.lost ? "num stale" : "num"],
        [String(l.restarts ?? 0), "num"], [l.last_error ?? ""]];
      rows.push(row(cells));
    }
  }
  return rows;
}

// The go / no-go table (the conductor's rows, as `tutti deploy check` shows them), until the downbeat.
function showPreflight(rows, phase) {
  // Nothing to check (a concert played in browsers alone), or the piece has started: out of the way.
  $("preflight-box").classList.toggle("hidden", phase !== "waiting" || !rows.length);
  $("preflight").replaceChildren(...rows.map((r) => row([[r.go ? "GO" : "NO-GO", r.go ? "go" : "nogo"], [r.what], [r.detail], [r.fix]])));
  const failed = rows.filter((r) => !r.go);
  $("preflight-summary").textContent = failed.length ? `NO-GO: ${failed.length} of ${rows.length} to fix` : `GO: all ${rows.length} checks pass`;
  $("preflight-summary").className = failed.length ? "stale" : "";
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.append(td);
  }
  return tr;
}

function showError(message) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${message}`;
  $("errors").prepend(li);
  while ($("errors").children.length > 12) $("errors").lastChild.remove();
}

// One QR code per part: the performer page at this console's own address, with the part's token.
async function showInvites(conductor) {
  let answer;
  try {
    answer = await conductor.invite(location.origin);
  } catch {
    return showError("invite: no answer from the conductor");
  }
  if (!answer.ok) return showError(`invite: ${answer.message}`);
  // A phone cannot reach this machine's loopback address: say which address it can.
  const others = (answer.addresses ?? []).map((a) => `${location.protocol}//${a.includes(":") ? `[${a}]` : a}:${location.port}/console`);
  $("invites-warning").textContent = LOOPBACK.test(location.hostname)
    ? `These links point at ${location.host}, this machine's own loopback address: no iPad or phone can open them. ` +
      (others.length ? `Open the console at ${others.join(" or ")} and invite from there.` : "Start the conductor with --lan.")
    : "";
  const cards = $("invites").querySelector(".cards");
  cards.replaceChildren(
    ...answer.invites.map((invite) => {
      const figure = document.createElement("figure");
      figure.dataset.part = invite.part;
      figure.innerHTML = invite.svg; // made by the conductor from the score's part ids
      const caption = document.createElement("figcaption");
      const link = Object.assign(document.createElement("a"), { href: invite.url, textContent: invite.name });
      caption.append(link);
      figure.append(caption);
      return figure;
    }),
  );
  $("invites").classList.add("show");
}

// A parameter's slider: sends while it moves, says why a value was refused, and otherwise follows
// the parameter wherever it is moved from (another console, an OSC controller, a performer).
function makeSlider(conductor, p) {
  const row = document.createElement("div");
  row.className = "param";
  row.innerHTML = `<label></label><input type="range"><span></span><small class="refusal"></small>`;
  row.dataset.param = p.id;
  row.querySelector("label").textContent = p.label ?? p.id;
  const input = Object.assign(row.querySelector("input"), { min: p.min, max: p.max, step: (p.max - p.min) / 100 });
  const out = row.querySelector("span");
  const refusal = row.querySelector(".refusal");
  const live = new LiveControl(input, (value) => conductor.command("param", { name: p.id, value }), {
    onAnswer: (answer) => (refusal.textContent = refusalText(answer)),
  });
  input.addEventListener("input", () => live.set(Number(input.value)));
  $("params").append(row);
  const follow = (value, now) => {
    if (value === undefined) return;
    if (!live.held(now)) input.value = value;
    out.textContent = Number(value).toFixed(2);
  };
  return { follow };
}

// Expected parts against who has joined: a part whose performer dropped shows as missing, and for how long.
// Its last column: the part's sketches, with a button to turn them off (a sketch that hangs the
// performer's page) or on again; `off` lists the parts whose sketches are off.
function rosterRows(score, feed, missingSince, off) {
  return score.parts.map((part) => {
    const performers = feed.clients.filter((c) => c.role === "performer" && c.part === part.id);
    const nodes = feed.clients.filter((c) => c.role === "node" && (c.parts ?? []).includes(part.id));
    // A part seen and then gone is "missing for"; one nobody has joined since this console opened, "no performer yet".
    if (performers.length) missingSince[part.id] = { seen: true };
    else if (!missingSince[part.id]?.since) missingSince[part.id] = { seen: missingSince[part.id]?.seen, since: feed.now };
    const { seen, since } = missingSince[part.id];
    const missing = Math.round(feed.now - (since ?? feed.now));
    // Nobody yet is not a fault (a part may be played from SuperCollider alone); a performer gone is.
    const state = performers.length ? ["joined", "ok"] : seen ? [`missing for ${missing} s`, "missing"] : ["no performer yet", "waiting"];
    const tr = row([[part.name], [part.site ?? "–"], [performers.map((c) => c.name).join(", ") || "–"],
      [nodes.map((c) => c.name).join(", ") || "–"], state]);
    const cell = document.createElement("td");
    if (part.layers.some((l) => l.type === "sketch")) {
      const isOff = off.includes(part.id);
      const button = Object.assign(document.createElement("button"), { textContent: isOff ? "Sketch on" : "Sketch off" });
      Object.assign(button.dataset, { sketches: part.id, on: String(isOff) });
      const span = document.createElement("span"); // one item: on a phone the cell spreads its items apart
      span.append(isOff ? "off · " : "on · ", button);
      cell.append(span);
    } else cell.textContent = "–";
    tr.append(cell);
    return tr;
  });
}

// A click on Stop arms it; a second within a few seconds stops. Stop loses the place in the piece.
function confirmed(button, label, armedLabel, action) {
  let timer = null;
  button.addEventListener("click", () => {
    if (timer) {
      clearTimeout(timer);
      timer = null;
      button.classList.remove("armed");
      button.textContent = label;
      action();
      return;
    }
    button.classList.add("armed");
    button.textContent = armedLabel;
    timer = setTimeout(() => {
      timer = null;
      button.classList.remove("armed");
      button.textContent = label;
    }, 4000);
  });
}

// Rehearsal: a loop (bars or a section, a number of passes), a bar with a pre-roll, the click track.
function rehearsal(score, targets, send) {
  for (const s of score.sections) $("loop-span").append(new Option(`section ${s.name ?? s.id}`, s.id));
  $("loop-span").addEventListener("change", () => {
    for (const id of ["loop-from", "loop-to"]) $(id).disabled = $("loop-span").value !== "";
  });
  for (const [value, label] of targets) $("click-where").append(new Option(label, value));
  $("loop").addEventListener("click", () => {
    const times = $("loop-times").value === "" ? {} : { times: Number($("loop-times").value) };
    const span = $("loop-span").value;
    send("loop", span ? { section: span, ...times } : { bars: [Number($("loop-from").value), Number($("loop-to").value)], ...times });
  });
  $("repeat").addEventListener("click", () => send("repeat"));
  $("unloop").addEventListener("click", () => send("unloop"));
  $("go-bar").addEventListener("click", () => send("bar", { bar: Number($("bar").value), preroll: Number($("preroll").value) }));
  const click = (on) => {
    const [kind, name] = $("click-where").value.split(":");
    send("click", { on, ...(name ? { [kind]: name } : {}) });
  };
  $("click-on").addEventListener("click", () => click(true));
  $("click-off").addEventListener("click", () => click(false));
}

function showRehearsal(score, state, loopSpan) {
  const loop = state?.loop;
  const click = state?.click?.length ? `click: ${state.click.join(", ").replaceAll(":", " ")}` : "click off";
  const text = `${loopText(score, loop) || "no loop"} · ${click}`;
  if ($("rehearsal-state").textContent !== text) {
    $("rehearsal-state").textContent = text;
    $("rehearsal-state").classList.toggle("on", Boolean(loop || state?.click?.length));
  }
  loopSpan.classList.toggle("on", Boolean(loop));
  if (loop) Object.assign(loopSpan.style, { left: `${(100 * loop.start) / score.duration}%`, width: `${(100 * (loop.end - loop.start)) / score.duration}%` });
}

async function main() {
  const conductor = await join({ role: "conductor", name: "console" });
  window.tutti = conductor;
  const score = conductor.score;
  $("title").textContent = score.title;
  $("tempo").value = score.tempo.bpm;
  const ask = async (what, request) => {
    try {
      const answer = await request();
      if (!answer.ok) showError(`${what}: ${answer.message}`);
      return answer;
    } catch {
      showError(`${what}: no answer from the conductor`);
      return null;
    }
  };
  const send = (cmd, fields) => ask(cmd, () => conductor.command(cmd, fields));
  const play = () => {
    const { phase } = conductor.phase();
    if (phase === "ended" && !confirm("The piece has ended. Play it again from the start?")) return;
    const bars = $("countin").value;
    send("play", bars === "" ? {} : { count_in: Number(bars) });
  };
  $("play").addEventListener("click", play);
  $("pause").addEventListener("click", () => send("pause"));
  confirmed($("stop"), "■ Stop…", "Press again to stop and go back to the start", () => send("stop"));
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select, textarea") || e.metaKey || e.ctrlKey || e.altKey) return;
    if (e.key === " ") {
      e.preventDefault();
      if (conductor.goingToPlay()) send("pause");
      else play();
    } else if (e.key === "[" || e.key === "]") {
      const pos = conductor.position();
      const { current, next } = sectionAt(score, pos);
      const before = score.sections.filter((s) => s.start < (current?.start ?? 0) || (s === current && pos - s.start > 2)).at(-1);
      const target = e.key === "]" ? next : before ?? current;
      if (target) send("section", { id: target.id });
    }
  });
  $("seek").addEventListener("change", async () => {
    const { seconds, error } = parsePosition(score, $("seek").value);
    if (error) {
      $("seek-out").textContent = "";
      return showError(`seek: ${error}`);
    }
    const answer = await send("seek", { position: seconds });
    if (answer?.ok) $("seek-out").textContent = `→ ${formatTime(seconds)}, bar ${barBeat(score, seconds)}`;
  });
  $("tempo").addEventListener("change", () => send("tempo", { bpm: Number($("tempo").value) }));
  for (const s of score.sections) {
    const b = document.createElement("button");
    b.textContent = `${s.name ?? s.id} (${formatTime(s.start)}, bar ${barBeat(score, s.start)})`;
    b.addEventListener("click", () => send("section", { id: s.id }));
    $("sections").append(b);
  }
  // The scrub bar: the piece's sections to scale; a click seeks to where it lands.
  const scrub = $("scrub");
  const bounds = [...score.sections.map((s) => s.start), score.duration];
  if (!score.sections.length || score.sections[0].start > 0) bounds.unshift(0);
  for (let k = 0; k + 1 < bounds.length; k++) {
    const s = score.sections.find((x) => x.start === bounds[k]);
    const cell = Object.assign(document.createElement("div"), { className: "sec", textContent: s ? s.name ?? s.id : "" });
    cell.style.width = `${(100 * (bounds[k + 1] - bounds[k])) / score.duration}%`;
    scrub.append(cell);
  }
  const head = Object.assign(document.createElement("div"), { className: "head" });
  const loopSpan = Object.assign(document.createElement("div"), { className: "loop" });
  scrub.append(loopSpan, head);
  scrub.addEventListener("click", (e) => {
    const r = scrub.getBoundingClientRect();
    const position = Math.min(score.duration, Math.max(0, ((e.clientX - r.left) / r.width) * score.duration));
    send("seek", { position: Math.round(position * 10) / 10 });
  });
  // A sound outside the score, for the targets the score names; arguments that read as numbers are numbers.
  const sites = [...new Set([...(score.sites ?? []), ...score.parts.map((p) => p.site).filter(Boolean)])];
  const targets = [...sites.map((s) => [`site:${s}`, `site ${s}`]), ...score.parts.map((p) => [`part:${p.id}`, `part ${p.name}`])];
  rehearsal(score, targets, send);
  for (const [value, label] of targets) $("sound-target").append(new Option(label, value));
  $("sound").addEventListener("submit", (event) => {
    event.preventDefault();
    const words = $("sound-args").value.trim().split(/\s+/).filter(Boolean);
    const args = words.map((w) => (Number.isNaN(Number(w)) ? w : Number(w)));
    const fields = { target: $("sound-target").value, address: $("sound-address").value.trim(), args };
    ask("sound", () => conductor.sound(fields));
  });
  const sliders = Object.fromEntries(score.parameters.map((p) => [p.id, makeSlider(conductor, p)]));
  $("invite").addEventListener("click", () => showInvites(conductor));
  $("invites-close").addEventListener("click", () => $("invites").classList.remove("show"));
  // Refusals of what this console asked are shown from their answers; these are the others.
  conductor.addEventListener("refused", ({ detail }) => {
    if (!["command", "sound", "invite"].includes(detail.event)) showError(`${detail.event}: ${detail.message}`);
  });
  conductor.addEventListener("disconnected", () => $("banner").classList.add("show"));
  conductor.addEventListener("welcome", () => $("banner").classList.remove("show"));
  const missingSince = {};
  $("roster").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-sketches]");
    if (button) send("sketches", { part: button.dataset.sketches, on: button.dataset.on === "true" });
  });
  const history = {}; // site -> [[conductor time, median rtt]]
  conductor.socket.on("clients", (feed) => {
    const rows = feed.clients.map((c) => {
      const seen = feed.now - c.last_seen;
      const parts = c.role === "node" ? (c.parts ?? []).join(", ") || "none (audio links only)" : c.part ?? "";
      return row([[c.name], [c.role], [parts], [c.site ?? "–"], [ms(c.rtt), "num"],
        [ms(c.offset), "num"], [ms(c.error), "num"], [`${seen.toFixed(0)} s`, seen > 10 ? "num stale" : "num"],
        soundOf(c)]);
    });
    $("clients").replaceChildren(...rows);
    $("roster").replaceChildren(...rosterRows(score, feed, missingSince, conductor.state.rehearsal?.sketches_off ?? []));
    const moved = Object.entries(feed.controls ?? {});
    $("controls").textContent = moved.length
      ? moved.map(([k, v]) => `${k}: ${Array.isArray(v) ? v.map((x) => Number(x).toFixed(2)).join(", ") : typeof v === "number" ? v.toFixed(2) : v}`).join(" · ")
      : "none moved yet";
    if (feed.recent?.length) $("recent").replaceChildren(...[...feed.recent].reverse().map((r) => {
      const li = document.createElement("li");
      li.textContent = `${new Date(r.t * 1000).toLocaleTimeString()} ${r.client || "?"} · ${r.event}: ${r.message}`;
      return li;
    }));
    const audience = Object.values(feed.audience ?? {}).reduce((a, b) => a + b, 0);
    $("audience").textContent = `${audience} in the audience`;
    const ends = linkRows(feed.clients);
    $("links").replaceChildren(...ends);
    // Said, not an empty table: a concert in one room has no links.
    $("links-box").classList.toggle("hidden", !ends.length);
    $("links-hint").textContent = ends.length ? "" : "None: no node runs a JackTrip end (the concert file's audio section sets them up).";
    showLinks(feed.links, $("ways"), $("wayplots"), $("ways-hint"), ends.length);
    showPreflight(feed.preflight ?? [], conductor.phase().phase);
    const bySite = {};
    for (const c of feed.clients) if (c.rtt != null) (bySite[c.site ?? "local"] ??= []).push(c.rtt);
    for (const [site, rtts] of Object.entries(bySite)) {
      rtts.sort((a, b) => a - b);
      (history[site] ??= []).push([feed.now, rtts[Math.floor(rtts.length / 2)]]);
      while (history[site][0][0] < feed.now - 120) history[site].shift();
    }
    drawPlots(feed.now);
    const late = feed.clients.reduce((n, c) => n + (c.health?.cues_late ?? 0), 0);
    $("lookahead").textContent = `${(feed.lookahead.value * 1000).toFixed(0)} ms` +
      (feed.lookahead.worst ? `, set by ${feed.lookahead.worst}` : "") + ` · ${late} cues late`;
    $("counts").textContent = Object.entries(feed.rejections).map(([k, v]) => `${k}: ${v}`).join(" · ") || "none";
  });

  function drawPlots(now) {
    const plots = $("plots");
    for (const [site, points] of Object.entries(history)) {
      let canvas = plots.querySelector(`[data-site="${CSS.escape(site)}"]`);
      if (!canvas) {
        canvas = document.createElement("canvas");
        canvas.dataset.site = site;
        plots.append(canvas);
      }
      const { g, width } = fitted(canvas, 60);
      const top = Math.max(0.002, ...points.map((p) => p[1])) * 1.2;
      g.strokeStyle = "#5fa8d3";
      g.beginPath();
      points.forEach(([t, rtt], i) => {
        const x = width - ((now - t) / 120) * width;
        const y = 58 - (rtt / top) * 50;
        if (i === 0) g.moveTo(x, y);
        else g.lineTo(x, y);
      });
      g.stroke();
      g.fillStyle = "#aeb7c2";
      g.font = "12px system-ui";
      g.fillText(`${site}: ${ms(points.at(-1)[1])} ms (scale ${ms(top)} ms)`, 6, 14);
    }
  }

  function frame() {
    const pos = conductor.position();
    $("clock").textContent = formatTime(pos);
    $("barbeat").textContent = barBeat(score, pos);
    const { current, next, untilNext } = sectionAt(score, pos);
    const { phase } = conductor.phase();
    $("phase").textContent = phase === "waiting" && conductor.state.seq > 0 ? "at the start" : PHASES[phase];
    $("phase").dataset.phase = phase;
    $("section").textContent = `${current?.name ?? current?.id ?? ""}${next ? ` — ${next.name ?? next.id} in ${Math.ceil(untilNext)} s` : ""}`;
    head.style.left = `calc(${(100 * pos) / score.duration}% - 1px)`;
    showRehearsal(score, conductor.state.rehearsal, loopSpan);
    for (const [name, slider] of Object.entries(sliders)) slider.follow(conductor.param(name), conductor.now());
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);
}

main();
