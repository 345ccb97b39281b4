// The replay page: a concert archive's score drawn with the audience view, moved by its recording.
// The audio's time is the clock: conductor time = the mix's start + audio.currentTime, and the
// position at that time comes from the segments the performance had (sent by `tutti replay`,
// worked out from the journal by the conductor's own code). The scrub bar moves the audio, and
// with it the score.
import { showAudience } from "./audience-view.js";
import { paramAt, positionAt, segmentAt } from "./conductor.js";
import { formatTime } from "./score-view.js";

const banner = document.getElementById("banner");
const audio = document.getElementById("audio");
const play = document.getElementById("play");
const scrub = document.getElementById("scrub");
const time = document.getElementById("time");

function say(text) {
  banner.textContent = text;
  banner.classList.add("show");
}

async function load() {
  const answer = await fetch("/api/replay");
  if (!answer.ok) throw new Error(`${answer.status} ${await answer.text()}`);
  return answer.json();
}

async function main() {
  let data;
  try {
    data = await load();
  } catch (err) {
    say(`The archive could not be read (${err.message}): is tutti replay still running? Start it again and reload.`);
    return;
  }
  const { score, start } = data;
  const state = { segments: data.segments, params: data.params };
  const now = () => start + audio.currentTime;
  const source = {
    score,
    now,
    position: (t = now()) => positionAt(state, t, score.duration),
    param: (name, t = now()) => paramAt(state, name, t),
    playing: (t = now()) => segmentAt(state, t).playing,
    problem: (what, message) => console.error(what, message),
  };
  window.replay = { source, audio, start, segments: state.segments };
  // The audio starts loading with the page: it may have failed before this ran.
  const unplayable = () => {
    say("The recording (mix.wav) cannot be played: run tutti archive mix again, then reload.");
    time.textContent = "no recording";
  };
  if (audio.error) unplayable();
  else audio.addEventListener("error", unplayable);
  const ready = () => {
    scrub.max = String(audio.duration);
    play.disabled = scrub.disabled = false;
  };
  if (audio.readyState >= 1) ready();
  else audio.addEventListener("loadedmetadata", ready);
  play.addEventListener("click", () => (audio.paused ? audio.play().catch((err) => say(`Cannot play: ${err.message}`)) : audio.pause()));
  const shown = () => {
    play.textContent = audio.paused ? "Play" : "Pause";
    time.textContent = `${formatTime(audio.currentTime)} / ${formatTime(audio.duration || 0)}`;
  };
  for (const type of ["play", "pause", "ended", "seeked", "loadedmetadata"]) audio.addEventListener(type, shown);
  // Dragging the bar moves the audio (and so the score) while it is held, not only when let go.
  let dragging = false;
  scrub.addEventListener("pointerdown", () => (dragging = true));
  window.addEventListener("pointerup", () => (dragging = false), true);
  scrub.addEventListener("input", () => {
    audio.currentTime = Number(scrub.value);
    shown();
  });
  function frame() {
    if (!dragging) scrub.value = String(audio.currentTime);
    if (!audio.paused) shown();
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);
  await showAudience(source, document.getElementById("score"), document.getElementById("stage"));
}

main();
