"""``tutti replay ARCHIVE``: the score drawn in step with the archive's recorded sound, in Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from playwright.async_api import Browser, Page

from conductor.core.journal import VERSION, Record
from conductor.core.protocol import Pause, Play, Repeat, Seek, SetLoop, SetParam
from conductor.core.score import load_score
from conductor.core.transport import Transport
from conductor.tools.replay import history
from tests.conftest import ROOT, SCORES

T0 = 1_800_000_000.0  # the conductor time where the mix starts
RATE = 48_000
SECONDS = 8.0
# The performance, in seconds after T0: played from the start, paused, moved on while paused, played again.
CHANGES = [
    (0.5, Play(cmd="play")),
    (2.5, Pause(cmd="pause")),
    (3.5, Seek(cmd="seek", position=30.0)),
    (4.0, Play(cmd="play")),
]
SHOTS = ROOT / "test-output"


def expected(a: float) -> float:
    """The score position at ``a`` seconds into the recording, from CHANGES worked out by hand."""
    if a < 0.5:
        return 0.0
    if a < 2.5:
        return a - 0.5
    if a < 4.0:
        return 2.0 if a < 3.5 else 30.0
    return 30.0 + (a - 4.0)


def make_archive(folder: Path) -> Path:
    """A collected and mixed archive: a journal of CHANGES on the demo score, and a mix.wav with a
    click at each change's conductor time."""
    score = load_score(SCORES / "demo.yaml")
    transport = Transport(score.score)
    header = {"type": "header", "version": VERSION, "score": str(score.path), "score_sha256": score.sha256}
    lines = [json.dumps({**header, "started": T0})]
    for at, command in CHANGES:
        change = transport.plan(command, T0 + at)
        transport.apply(change)
        lines.append(json.dumps(Record(change, T0 + at - 0.2, {"role": "conductor", "name": "test"}).to_json()))
    (folder / "journal.jsonl").write_text("\n".join(lines) + "\n")
    sound = np.zeros((int(SECONDS * RATE), 2), np.float32)
    for at, _ in CHANGES:
        sound[round(at * RATE) : round(at * RATE) + 48] = 0.8
    (folder / "stems").mkdir()
    soundfile.write(str(folder / "stems" / "na-scsynth.wav"), sound, RATE, subtype="PCM_24")
    soundfile.write(str(folder / "mix.wav"), sound, RATE, subtype="PCM_24")
    (folder / "stems" / "start.json").write_text(json.dumps({"t": T0, "rate": RATE}))
    (folder / "index.json").write_text(json.dumps({"journal": "journal.jsonl", "tracks": []}))
    return folder


def start_replay(archive: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "conductor", "replay", str(archive), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the one line (or the end, if it failed)
    assert "open http://" in line, line
    return proc, line.split("open ")[1].strip()


@pytest.fixture
def replay(tmp_path: Path) -> Iterator[str]:
    proc, url = start_replay(make_archive(tmp_path))
    yield url
    proc.terminate()
    proc.wait(10)


async def drawn(page: Page) -> dict[str, float]:
    """What the page drew last, and the audio's time now, read together."""
    return await page.evaluate(
        """() => { const c = document.getElementById('score');
                   return { at: Number(c.dataset.at), position: Number(c.dataset.position),
                            audio: replay.audio.currentTime, paused: replay.audio.paused,
                            scrub: Number(document.getElementById('scrub').value) }; }"""
    )


@pytest.mark.integration
async def test_replay_follows_the_recording_and_the_scrub_bar(replay: str, browser: Browser) -> None:
    page = await browser.new_page(viewport={"width": 1024, "height": 768})
    await page.goto(replay)
    await page.wait_for_function("() => !document.getElementById('play').disabled", timeout=15_000)
    assert await page.evaluate("replay.audio.duration") == pytest.approx(SECONDS, abs=0.01)  # the mix it served
    await page.locator("#scrub").fill("1.5")  # from before the pause, through it and the seek
    await page.wait_for_function("() => Math.abs(replay.audio.currentTime - 1.5) < 0.05", timeout=5_000)
    await page.click("#play")
    await page.wait_for_function("() => !replay.audio.paused", timeout=5_000)
    seen: list[dict[str, float]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        shown = await drawn(page)
        seen.append(shown)
        if shown["audio"] > 4.8:
            break
        await page.wait_for_timeout(50)  # a sample every 50 ms, whatever the audio does
    assert seen[-1]["audio"] > 4.8, "the recording did not play on"
    await page.click("#play")
    await page.wait_for_function("() => replay.audio.paused", timeout=5_000)
    for shown in seen:
        a = shown["at"] - T0
        # drawn for the audio's own time (a frame or two behind it on a busy machine) ...
        assert shown["audio"] - 0.5 < a <= shown["audio"] + 0.01, shown
        # ... at the position the journal gives for it
        assert shown["position"] == pytest.approx(expected(a), abs=1e-6), shown
    spans = {"playing": (1.6, 2.4), "paused": (2.6, 3.4), "moved on": (3.6, 3.9), "playing again": (4.1, 4.7)}
    for name, (lo, hi) in spans.items():
        assert any(lo <= s["at"] - T0 <= hi for s in seen), f"no frame drawn while {name}"

    # The scrub bar moves the audio and the score together.
    await page.locator("#scrub").fill("6.25")
    await page.wait_for_function("() => Math.abs(replay.audio.currentTime - 6.25) < 0.01", timeout=5_000)
    await page.wait_for_function(f"() => Math.abs(document.getElementById('score').dataset.at - {T0 + 6.25}) < 0.01")
    shown = await drawn(page)
    assert shown["position"] == pytest.approx(32.25, abs=1e-3)
    assert shown["scrub"] == pytest.approx(6.25, abs=0.01)
    assert "0:06.2 / 0:08.0" in await page.inner_text("#time") or "0:06.3 / 0:08.0" in await page.inner_text("#time")

    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / "replay-ipad.png"))
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.wait_for_function("() => document.getElementById('score').width === 390 * devicePixelRatio")
    await page.screenshot(path=str(SHOTS / "replay-phone.png"))
    await page.close()


@pytest.mark.integration
def test_the_recording_is_served_in_ranges_for_seeking(replay: str) -> None:
    request = urllib.request.Request(replay + "/mix.wav", headers={"Range": "bytes=1000-1999"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 206
        assert len(answer.read()) == 1000


@pytest.mark.integration
def test_what_is_not_an_archive_is_said_in_one_line(tmp_path: Path) -> None:
    def refusal(folder: Path) -> str:
        run = [sys.executable, "-m", "conductor", "replay", str(folder)]
        done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        return done.stderr.strip()

    assert refusal(tmp_path).endswith("not a concert archive (no index.json): run tutti archive collect first")
    archive = make_archive(tmp_path)
    (archive / "mix.wav").unlink()
    assert refusal(archive).endswith(f"no mix.wav to play: run tutti archive mix {archive} first")
    soundfile.write(str(archive / "mix.wav"), np.zeros((RATE, 2), np.float32), RATE)
    journal = (archive / "journal.jsonl").read_text().replace(str(SCORES / "demo.yaml"), "/gone/demo.yaml")
    (archive / "journal.jsonl").write_text(journal)
    assert refusal(archive).endswith("give it with --score FILE")  # the score moved since the concert


@pytest.mark.unit
def test_the_replays_history_keeps_every_jump_of_a_loop() -> None:
    """A loop's jumps back (the conductor's own ``repeat`` changes) are in what the page is sent,
    as are the values a fader took, none pruned: the replay shows the rehearsal as it went."""
    score = load_score(SCORES / "demo.yaml")
    transport = Transport(score.score)
    bar = transport.bar_start(2)  # seconds in a bar
    commands = [(0.0, Play(cmd="play")), (1.0, SetLoop(cmd="loop", bars=(1, 1), times=3))]
    commands += [(1.0 + bar * k, Repeat(cmd="repeat")) for k in (1, 2)]
    commands += [(1.0 + bar * 2.5, SetParam(cmd="param", name=score.score.parameters[0].id, value=0.5))]
    records = []
    for at, command in commands:
        change = transport.plan(command, T0 + at)
        transport.apply(change)
        records.append(Record(change, T0 + at, {"role": "conductor", "name": "loop"}))
    sent = history(score, records)
    state = Transport(score.score)
    state.restore(sent)  # the page's state is a snapshot's: the same code reads it
    for k in (0, 1, 2):  # each pass starts the bar again
        assert state.position(T0 + 1.0 + bar * k + 0.25) == pytest.approx(0.25)
    assert state.position(T0 + 0.5) == pytest.approx(0.5)  # before the loop, as it played
    name = score.score.parameters[0].id
    assert state.params[name].at(T0 + bar * 2.5 + 1.5) == 0.5
    assert state.params[name].at(T0) == score.score.parameters[0].default
