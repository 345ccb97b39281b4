"""Global-mode p5 sketches, as openprocessing.org exports them, in real headless Chromium: each runs
unchanged in a sandboxed frame of its own, in step with the conductor's clock, its socket.io events
reach the other parts' sketches (timed ones at their time), and a sketch that throws, allocates
without end or loops forever stops alone while the rest of the performer's view goes on drawing."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Frame, Page

from conductor.core import score as score_module
from conductor.core.jscheck import MAX_SOURCE, SyntaxChecker
from tests.conftest import SCORES, TOKENS, ConductorProcess, write_concert
from tests.test_browser import conductor_position

# Seconds: a sketch's clock, and when a timed event fires, against the conductor's: within 1 or 2 ms
# on a quiet machine; generous here, for one whose cores are busy (bench/sketch_timing.py prints them).
BOUND = 0.005
FIRED_BOUND = 0.05
TROUBLES = {
    "throws.js": "function setup() { createCanvas(windowWidth, windowHeight); }\n"
    "function draw() {\n  background(30);\n  if (frameCount > 20) {\n    const x = undefined;\n"
    "    x.composerDividedByZero();\n  }\n}\n",
    # 20 MB a frame, kept for ever: without a stop the page's renderer would run out of memory
    "hog.js": "const hoard = [];\nfunction setup() { createCanvas(windowWidth, windowHeight); }\n"
    "function draw() {\n  for (let i = 0; i < 20; i++) hoard.push(new Array(131072).fill(i + 0.5));\n"
    "  background(hoard.length % 255);\n}\n",
    "spin.js": "function setup() { createCanvas(windowWidth, windowHeight); }\nfunction draw() {\n"
    "  background(40);\n  if (frameCount > 30) {\n    let n = 0;\n    while (true) n++;\n  }\n}\n",
}


def part(pid: str, src: str, p5: str) -> str:
    return (
        f"  - id: {pid}\n    name: {pid.capitalize()}\n    layers:\n"
        "      - {type: timeline, area: [0, 0.7, 1, 0.3], shapes: [{shape: bar, start: 0, end: 60}]}\n"
        f'      - {{type: sketch, src: {src}, p5: "{p5}", area: [0, 0, 1, 0.7]}}\n'
    )


def talking_score(folder: Path, title: str, duration: int = 120) -> Path:
    """A score in ``folder`` whose parts call (p5 1.x) and response (2.x) run the openprocessing
    sketch call-and-response.js (as talk.js): its path."""
    shutil.copy(SCORES / "sketches" / "call-and-response.js", folder / "talk.js")
    parts = part("call", "talk.js", "1.x") + part("response", "talk.js", "2.x")
    (folder / "score.yaml").write_text(f"title: {title}\nduration: {duration}\nparts:\n" + parts)
    return folder / "score.yaml"


@pytest.fixture
def sketches(tmp_path: Path) -> Iterator[ConductorProcess]:
    """A playing piece: two parts running the same openprocessing sketch (p5 1.x and 2.x), and three
    with sketches that go wrong."""
    shutil.copy(SCORES / "sketches" / "call-and-response.js", tmp_path / "talk.js")
    for name, source in TROUBLES.items():
        (tmp_path / name).write_text(source)
    parts = [part("call", "talk.js", "1.x"), part("response", "talk.js", "2.x")]
    parts += [part(name.removesuffix(".js"), name, "1.x") for name in TROUBLES]
    (tmp_path / "score.yaml").write_text("title: Sketches\nduration: 120\nparts:\n" + "".join(parts))
    proc = ConductorProcess(write_concert(tmp_path, score=tmp_path / "score.yaml"), "--play")
    yield proc
    proc.stop()


async def performer_page(browser: Browser, conductor: ConductorProcess, part_id: str) -> Page:
    """A performer's page, once its sketch's frame has run with the synced clock."""
    page = await browser.new_page(viewport={"width": 1024, "height": 768})
    await page.add_init_script("window.tuttiSketchMemory = 256 * 2 ** 20")  # the hog is stopped early
    await page.goto(f"{conductor.url}/perform?part={part_id}&token={TOKENS['performer']}&name={part_id}")
    await page.wait_for_function(
        "() => window.tuttiView?.sketches[0]?.ready && window.tutti.clock.samples >= 8", timeout=20_000
    )
    return page


async def performer(browser: Browser, conductor: ConductorProcess, part_id: str) -> tuple[Page, Frame]:
    """A performer's page and its sketch's frame, for a sketch that goes on running."""
    page = await performer_page(browser, conductor, part_id)
    return page, await sketch_frame(page)


async def sketch_frame(page: Page) -> Frame:
    """The page's sketch frame now (a live edit replaces it), not its spare (waiting for the next)."""
    element = await page.wait_for_selector(".sketch-frame:not([data-waiting])", state="attached")
    frame = await element.content_frame()
    assert frame is not None
    return frame


async def clock_error(frame: Frame, conductor: ConductorProcess) -> float:
    """How far the sketch's `tutti.time()` is from the conductor's position, at one wall-clock instant."""
    wall, pos = await frame.evaluate("[(performance.timeOrigin + performance.now()) / 1000, tutti.time()]")
    return abs(pos - conductor_position(conductor, wall, conductor.status()))


async def test_openprocessing_sketches_run_unchanged_in_step_and_talk(
    browser: Browser, sketches: ConductorProcess
) -> None:
    (call, call_frame), (response, response_frame) = [
        await performer(browser, sketches, p) for p in ("call", "response")
    ]
    for frame in (call_frame, response_frame):  # p5 1.x and 2.x, each in step with the conductor
        assert await frame.evaluate("typeof setup === 'function' && frameCount > 0 && width === innerWidth")
        for _ in range(5):
            error = await clock_error(frame, sketches)
            assert error < BOUND, f"tutti.time() {error * 1000:.2f} ms from the conductor's position"

    # mousePressed in one part's sketch: socket.emit reaches the other's socket.on, not its own.
    await call.mouse.click(500, 250)
    await response_frame.wait_for_function("received.length === 1", timeout=5000)
    heard = await response_frame.evaluate("received[0]")
    top = await call.evaluate("document.querySelector('.sketch-frame').getBoundingClientRect().top")
    height = await call_frame.evaluate("height")
    assert heard == {"x": pytest.approx(500 / 1024), "y": pytest.approx((250 - top) / height, abs=0.01)}
    assert await call_frame.evaluate("received.length") == 0

    # A timed event fires at its score time on the other part's synced clock.
    await response_frame.evaluate(
        "window.cues = []; tutti.on('cue', (data, meta) => "
        "cues.push([(performance.timeOrigin + performance.now()) / 1000, tutti.time(), data, meta]))"
    )
    answer = await call_frame.evaluate(
        "(async () => { const at = tutti.time() + 1.0; "
        "return [at, await tutti.send('cue', {n: 1}, {to: ['response'], at})]; })()"
    )
    at, ack = answer
    assert ack["ok"] and ack["t"] > 0
    await response_frame.wait_for_function("cues.length === 1", timeout=5000)
    wall, fired_at, data, meta = await response_frame.evaluate("cues[0]")
    assert data == {"n": 1} and meta["from"] == "call" and meta["at"] == pytest.approx(at)
    late = f"fired {(fired_at - at) * 1000:.2f} ms from its time on the page's clock ({meta['late'] * 1000:.2f} late)"
    assert abs(fired_at - at) < FIRED_BOUND, late
    conductor_at = conductor_position(sketches, wall, sketches.status())
    assert abs(conductor_at - at) < FIRED_BOUND, f"fired {(conductor_at - at) * 1000:.2f} ms from the conductor's"

    # Malformed events are refused with their reason; nothing reaches the other part.
    too_big = await call_frame.evaluate("tutti.send('x', 'y'.repeat(5000))")
    assert too_big["ok"] is False and too_big["code"] == "bad_payload" and "at most 4096" in too_big["message"]
    nobody = await call_frame.evaluate("tutti.send('x', 1, {to: ['nobody']})")
    assert nobody["code"] == "unknown_part" and "nobody" in nobody["message"]
    late = await call_frame.evaluate("tutti.send('x', 1, {at: 0})")
    assert late["code"] == "too_late"
    assert await response_frame.evaluate("cues.length") == 1

    # The layer follows the page: windowResized resizes the sketch's canvas with its frame.
    await response.set_viewport_size({"width": 800, "height": 600})
    await response_frame.wait_for_function("innerWidth === 800 && width === 800", timeout=5000)
    for page in (call, response):
        assert await page.evaluate("window.tuttiView.sketches[0].error") is None

    # Journalled: a replay shows the events among the changes, the timed one with its score time.
    events = sketches.concert.parent / "journal.sketch.jsonl"
    for _ in range(250):
        if events.is_file() and '"name":"cue"' in events.read_text():
            break
        await asyncio.sleep(0.02)
    journal = str(sketches.concert.parent / "journal.jsonl")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conductor", "replay", journal, "--speed", "100", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    replayed = out.decode()
    assert "#1    play" in replayed and "sketch ripple from call to every part:" in replayed
    assert f'sketch cue from call to response at {at:g} s: {{"n":1}}' in replayed


async def test_a_sketch_that_throws_allocates_or_loops_stops_alone(
    browser: Browser, sketches: ConductorProcess
) -> None:
    # A stopped sketch's frame is removed, perhaps before its page is looked at: pages only.
    pages = [await performer_page(browser, sketches, name.removesuffix(".js")) for name in TROUBLES]
    reasons = ["composerDividedByZero", "allocated", "a loop ran on"]
    for page, reason in zip(pages, reasons, strict=True):
        await page.wait_for_function("() => window.tuttiView.sketches[0].error", timeout=20_000)
        error = await page.evaluate("window.tuttiView.sketches[0].error")
        assert reason in error
        assert reason in await page.inner_text(".sketch-error")  # said on the layer
    await asyncio.sleep(0.2)
    for page in pages:  # every page goes on drawing at display rate, in step
        frames, position = await page.evaluate("[window.tuttiView.frames, window.tuttiView.position]")
        await page.wait_for_function(f"window.tuttiView.frames > {frames + 30}", timeout=2000)
        assert await page.evaluate("window.tuttiView.position") > position
    problems = [r for r in sketches.status()["rejections"] if r == "page_problem"]
    assert problems  # each reached the conductor's console


async def test_live_edits_reach_every_page_in_place_and_broken_ones_are_refused(
    browser: Browser, tmp_path: Path
) -> None:
    sketch = tmp_path / "talk.js"
    shutil.copy(SCORES / "sketches" / "call-and-response.js", sketch)
    score = tmp_path / "score.yaml"
    score.write_text(
        "title: Edits\nduration: 120\nparts:\n" + part("call", "talk.js", "1.x") + part("response", "talk.js", "2.x")
    )
    proc = ConductorProcess(write_concert(tmp_path, score=score), "--play", "--watch")
    try:
        pages = [(await performer(browser, proc, p))[0] for p in ("call", "response")]
        console = await browser.new_page()
        await console.goto(f"{proc.url}/console?token={TOKENS['conductor']}")
        # The composer's page: both parts as their performers see them, each sketch's frame rate.
        compose = await browser.new_page(viewport={"width": 1200, "height": 900})
        await compose.goto(f"{proc.url}/compose?token={TOKENS['conductor']}")  # no composer token: the conductor's
        await compose.wait_for_function(
            "[...document.querySelectorAll('.tile .status')].filter(s => / [1-9]\\d* frames\\/s/.test(s.textContent))"
            ".length === 2",
            timeout=20_000,
        )
        for page in pages:
            await page.evaluate("window.loadedOnce = true; window.firstSocket = tutti.socket.id")
            # Every frame the page draws from now on: is a sketch shown? (A swap must never leave the layer empty.)
            await page.evaluate(
                "window.emptyFrames = 0; (function look() { const shown = "
                "document.querySelectorAll('.sketch-frame:not([data-waiting])').length; "
                "if (!shown) emptyFrames += 1; requestAnimationFrame(look); })()"
            )

        # A sketch edited: every page runs the new version, in place, on the same connection.
        sketch.write_text(sketch.read_text().replace("heard`", "heard, take 2`"))
        for page in pages:
            await page.wait_for_function("tuttiView.edits === 1", timeout=10_000)
            assert await (await sketch_frame(page)).evaluate("draw.toString().includes('take 2')")
            assert await page.evaluate("tutti.sources['talk.js'].includes('take 2')")  # sent with the edit
            assert await page.evaluate("window.loadedOnce && tutti.socket.id === window.firstSocket")
            assert await clock_error(await sketch_frame(page), proc) < BOUND  # at its place in the piece
            assert await page.evaluate("emptyFrames") == 0
            # the new version, and (once the page is idle) the next spare, p5 loaded and waiting
            await page.wait_for_function("document.querySelectorAll('.sketch-frame[data-waiting]').length === 1")
            # p5 and acorn are written into every frame from the page's one download: a frame's opaque
            # origin has no cache, and would download them again and compile them anew.
            for element in await page.query_selector_all(".sketch-frame"):
                frame = await element.content_frame()
                assert frame is not None
                fetched = await frame.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
                assert [url for url in fetched if "/vendor/" in url] == []

        # The score edited: the timeline's new shape is drawn from the new version, sketches left running.
        score.write_text(score.read_text().replace("end: 60}", "end: 90}"))
        for page in pages:
            await page.wait_for_function("tuttiView.edits === 2", timeout=10_000)
            assert await page.evaluate("tutti.score.parts[0].layers[0].shapes[0].end") == 90

        # A broken edit: refused with file:line, in the terminal and on the console; pages keep the last version.
        sketch.write_text(sketch.read_text().replace("function draw() {", "function draw() {{"))
        await console.wait_for_function(
            "document.getElementById('recent').textContent.includes('talk.js line')", timeout=10_000
        )
        recent = await console.inner_text("#recent")
        assert f"{score}:" in recent and "SyntaxError" in recent
        served = await pages[0].evaluate("fetch('/score-files/talk.js').then(r => r.text())")
        assert "take 2" in served and "{{" not in served  # a page that loads now gets the last good version
        await compose.wait_for_selector("#refused:not([hidden])", timeout=10_000)
        assert "talk.js line" in await compose.inner_text("#refused")
        assert any("edit refused" in line and f"{score}:" in line for line in proc.log_lines)
        for page in pages:
            assert await page.evaluate("tuttiView.edits") == 2
            assert await (await sketch_frame(page)).evaluate("draw.toString().includes('take 2') && frameCount > 0")
            assert await page.evaluate("tuttiView.sketches[0].error") is None
        status = proc.status()
        assert sum(c["role"] == "performer" for c in status["clients"]) == 2  # the composer's views are not performers
    finally:
        proc.stop()


# A loop without end that no loop statement shows (so the loop guard cannot stop it): a regular
# expression that backtracks for ever, from the sketch's 90th frame.
HANG = (
    "function setup() { createCanvas(windowWidth, windowHeight); }\n"
    "function draw() {\n  background(20, 60, 90);\n  circle(width / 2, height / 2, 40 + (frameCount % 60));\n"
    "  if (frameCount === 90) /(a+)+b/.test('a'.repeat(60));\n}\n"
)


async def until_stuck(frame: Frame) -> None:
    """Waits until the frame no longer answers (its sketch is in its loop)."""
    for _ in range(20):
        try:
            await asyncio.wait_for(frame.evaluate("frameCount"), 1)
        except TimeoutError:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the sketch's frame never hung")


@pytest.mark.integration
async def test_the_conductor_turns_a_parts_sketches_off_and_the_page_obeys(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "hang.js").write_text(HANG)
    score = tmp_path / "score.yaml"
    score.write_text("title: Hangs\nduration: 120\nparts:\n" + part("hang", "hang.js", "1.x"))
    proc = ConductorProcess(write_concert(tmp_path, score=score), "--play")
    try:
        page, frame = await performer(browser, proc, "hang")
        console = await browser.new_page(viewport={"width": 1280, "height": 900})
        await console.goto(f"{proc.url}/console?token={TOKENS['conductor']}")
        button = console.locator("#roster button[data-sketches=hang]")
        await button.wait_for(timeout=10_000)
        assert await button.inner_text() == "Sketch off"

        # The sketch hangs: its frame, sandboxed without allow-same-origin, has a process of its own
        # here (Chromium isolates sandboxed frames), so the page goes on drawing, in step.
        await until_stuck(frame)
        frames, position = await page.evaluate("[tuttiView.frames, tuttiView.position]")
        await page.wait_for_function(f"tuttiView.frames > {frames + 30}", timeout=5000)
        assert await page.evaluate("tuttiView.position") > position

        # The console turns the part's sketches off: the page drops the frame, says so, and draws on.
        await button.click()
        await page.wait_for_function(
            "tuttiView.sketches.length === 0 && !document.querySelector('.sketch-frame')"
            " && !document.getElementById('sketch-off').hidden",
            timeout=10_000,
        )
        assert "Sketch off by the conductor" in await page.inner_text("#sketch-off")
        frames, position = await page.evaluate("[tuttiView.frames, tuttiView.position]")
        await page.wait_for_function(f"tuttiView.frames > {frames + 30}", timeout=5000)
        assert await page.evaluate("tuttiView.position") > position
        await console.locator("#roster button[data-sketches=hang]", has_text="Sketch on").wait_for(timeout=5000)

        # Journalled like any change; and on again: the page runs the sketch afresh.
        journal = (tmp_path / "journal.jsonl").read_text()
        assert '"cmd":"sketches","part":"hang","on":false' in journal.replace(" ", "")
        replay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "conductor", "replay", str(tmp_path / "journal.jsonl"), "--speed", "100",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        replayed, _ = await asyncio.wait_for(replay.communicate(), 60)
        assert replay.returncode == 0 and "sketches" in replayed.decode(), replayed.decode()
        await console.locator("#roster button[data-sketches=hang]").click()
        await page.wait_for_function(
            "tuttiView.sketches[0]?.ready && document.getElementById('sketch-off').hidden", timeout=20_000
        )
        rejected = await console.evaluate("tutti.command('sketches', {part: 'nobody', on: false})")
        assert rejected["ok"] is False and rejected["code"] == "unknown_part"
    finally:
        proc.stop()


@pytest.mark.integration
def test_sketch_files_are_checked_by_one_node_and_errors_read_as_node_check_says() -> None:
    node = shutil.which("node")
    assert node
    checker = SyntaxChecker(node)
    try:
        good = (SCORES / "sketches" / "call-and-response.js").read_bytes()
        for i in range(20):  # twenty edits: one node process answers them all
            assert checker.parses(good + f"\n// edit {i}\n".encode(), script=True) is True
        assert checker.parses(b"export default (p) => { p.draw = () => {}; };\n", script=False) is True
        assert checker.parses(b"function draw() {\n  let x = ;\n}\n", script=True) is False
        assert checker.parses(b"export default (p) => { await 1; };\n", script=False) is False
        assert checker.parses(b"export default 1;\n", script=True) is False  # a global-mode sketch is a script
        assert checker.started == 1
        assert checker.proc is not None
        checker.proc.kill()  # a checker that died is started again
        assert checker.parses(good, script=True) is True and checker.started == 2
        assert checker.parses(b" " * (MAX_SOURCE + 1), script=True) is None  # too large: left to node --check
    finally:
        checker.close()
    # What tutti check says of a file that does not parse is node --check's own line and error.
    error = score_module._parse_error(node, b"function setup() {\n  let x = ;\n}\n// 1\n", True)
    assert error == "line 2: SyntaxError: Unexpected token ';'"
