"""The browser views in real headless Chromium: console and performer pages in step with the conductor.

A page's clock reads the same system clock as Python (``performance.timeOrigin + performance.now()``
and ``time.time()``), and the conductor reports its clock minus wall time, so a page's playhead
can be checked against the conductor's exactly, at the same wall-clock instant.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from conductor.client import TuttiClient
from conductor.core.score import Score
from conductor.core.transport import Transport
from conductor.tools.emulate import TcpDelayProxy
from tests.conftest import ROOT, SCORES, TOKENS, ConductorProcess, write_concert

SHOTS = ROOT / "test-output"
SAMPLE = "() => [(performance.timeOrigin + performance.now()) / 1000, window.tutti.position()]"


@pytest.fixture
def slow_conductor(tmp_path: Path) -> ConductorProcess:  # type: ignore[misc]
    """A conductor whose changes take effect 1 s after they are sent, so tests can watch them land."""
    proc = ConductorProcess(write_concert(tmp_path, lookahead=1.0))
    yield proc  # type: ignore[misc]
    proc.stop()


async def open_page(browser: Browser, url: str) -> Page:
    page = await browser.new_page(viewport={"width": 1024, "height": 768})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(url)
    await page.wait_for_function("() => window.tutti && window.tutti.score && window.tutti.clock.samples >= 8")
    return page


_SCORES: dict[str, dict[str, Any]] = {}


def conductor_position(conductor: ConductorProcess, wall: float, status: dict[str, Any]) -> float:
    """The conductor's score position at a wall-clock time, from its state and clock."""
    if conductor.url not in _SCORES:
        with urllib.request.urlopen(conductor.url + "/api/score", timeout=5) as r:
            _SCORES[conductor.url] = json.loads(r.read())
    transport = Transport(Score.model_validate(_SCORES[conductor.url]))
    transport.restore(status["state"])
    return transport.position(wall + status["clock_minus_wall"])


async def playhead_error(page: Page, conductor: ConductorProcess) -> float:
    """How far the page's playhead is from the conductor's at one wall-clock instant, in seconds:
    the median of three readings (on a busy machine one may catch the page's clock mid-correction)."""
    errors = []
    for _ in range(3):
        wall, pos = await page.evaluate(SAMPLE)
        errors.append(abs(pos - conductor_position(conductor, wall, conductor.status())))
    return statistics.median(errors)


async def wait_for_change(conductor: ConductorProcess, seq: int) -> dict[str, Any]:
    for _ in range(100):
        status = conductor.status()
        if status["state"]["seq"] >= seq:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"change {seq} never arrived")


async def jump_time(page: Page, t: float, clock_minus_wall: float) -> tuple[float, float]:
    """Sample a page's playhead around conductor time t; return the conductor times of the last
    sample before its position jumped and the first after."""
    samples = await page.evaluate(
        """async ([t, skew]) => {
        const wall = () => (performance.timeOrigin + performance.now()) / 1000;
        const out = [];
        while (wall() + skew < t - 0.1) await new Promise(r => setTimeout(r, 5));
        while (wall() + skew < t + 0.1) out.push([wall(), window.tutti.position()]);
        return out;
    }""",
        [t, clock_minus_wall],
    )
    for (w0, p0), (w1, p1) in itertools.pairwise(samples):
        if abs(p1 - p0) > 1.0:
            return w0 + clock_minus_wall, w1 + clock_minus_wall
    raise AssertionError("the playhead never jumped")


async def test_console_drives_two_performer_pages_in_step(browser: Browser, slow_conductor: ConductorProcess) -> None:
    base = slow_conductor.url
    console = await open_page(browser, f"{base}/console?token={TOKENS['conductor']}")
    drones = await open_page(browser, f"{base}/perform?part=drones&token={TOKENS['performer']}")
    pulses = await open_page(browser, f"{base}/perform?part=pulses&token={TOKENS['performer']}")
    performers = [drones, pulses]

    await console.click("text=▶ Play")
    await wait_for_change(slow_conductor, 1)
    await asyncio.sleep(1.5)
    for page in performers:
        assert await page.evaluate("window.tutti.playing()")
        assert await page.evaluate("window.tuttiView.frames") > 30  # drawn every frame
        for _ in range(5):
            error = await playhead_error(page, slow_conductor)
            assert error < 0.002, f"playhead {error * 1000:.2f} ms from the conductor's"

    # A seek from the console lands on both pages at its effective time.
    await console.fill("#seek", "1:00")
    await console.press("#seek", "Enter")
    status = await wait_for_change(slow_conductor, 2)
    t = status["state"]["segments"][-1]["t"]
    jumps = await asyncio.gather(*(jump_time(p, t, status["clock_minus_wall"]) for p in performers))
    for before, after in jumps:
        assert before < t + 0.002 and after > t - 0.002, (before - t, after - t)
    for page in performers:
        assert await playhead_error(page, slow_conductor) < 0.002

    # A section jump, then a pause, reach both pages too.
    await console.click("text=Slack water (1:50.0, bar 34.1)")
    status = await wait_for_change(slow_conductor, 3)
    t = status["state"]["segments"][-1]["t"]
    await asyncio.gather(*(jump_time(p, t, status["clock_minus_wall"]) for p in performers))
    await console.click("text=❚❚ Pause")
    status = await wait_for_change(slow_conductor, 4)
    await asyncio.sleep(1.2)
    for page in performers:
        assert not await page.evaluate("window.tutti.playing()")
        assert await playhead_error(page, slow_conductor) < 0.002

    SHOTS.mkdir(exist_ok=True)
    await drones.screenshot(path=str(SHOTS / "performer-drones.png"))
    await console.screenshot(path=str(SHOTS / "console.png"))
    table = await console.inner_text("#clients")
    assert "drones" in table and "pulses" in table
    assert "None: no node runs a JackTrip end" in await console.inner_text("#links-hint")  # not an empty table
    # The round-trip plots are drawn at the size they are shown, a phone's too: labels stay 12 px, sharp.
    await console.set_viewport_size({"width": 390, "height": 844})
    await console.wait_for_function(
        "() => [...document.querySelectorAll('#plots canvas')].some(c =>"
        " c.clientWidth < 390 && c.width === Math.round(c.clientWidth * devicePixelRatio))"
    )
    assert not await console.is_visible("#links-box") and not await console.is_visible("#ways-box")
    # On a phone the tables are cards of labelled cells: nothing scrolls sideways.
    wide = await console.evaluate(
        "[document.documentElement, ...document.querySelectorAll('.wide-table')]"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.id || e.tagName)"
    )
    assert wide == [], wide
    first_row = "#clients tr:first-child td"
    labels = await console.evaluate(f"[...document.querySelectorAll('{first_row}')].map(td => td.dataset.label)")
    assert labels[:4] == ["name", "role", "part(s)", "site"], labels
    for page in (console, *performers):
        assert page.errors == []  # type: ignore[attr-defined]


async def test_a_performer_page_cannot_move_the_transport(browser: Browser, conductor: ConductorProcess) -> None:
    page = await open_page(browser, f"{conductor.url}/perform?part=drones&token={TOKENS['performer']}")
    answer = await page.evaluate("window.tutti.command('play')")
    assert answer["ok"] is False and answer["code"] == "forbidden"
    status = conductor.status()
    assert status["state"]["seq"] == 0 and status["rejections"] == {"forbidden": 1}


async def test_performer_controls_move_their_parameters(browser: Browser, conductor: ConductorProcess) -> None:
    page = await open_page(browser, f"{conductor.url}/perform?part=drones&token={TOKENS['performer']}")
    await page.eval_on_selector(
        ".control input[type=range]", "el => { el.value = 0.9; el.dispatchEvent(new Event('input')); }"
    )
    await wait_for_change(conductor, 1)
    await asyncio.sleep(0.3)
    assert conductor.status()["state"]["params"]["density"][-1][1] == pytest.approx(0.9)
    answer = await page.evaluate("window.tutti.control('bright', 0.5)")  # another part's control
    assert answer["code"] == "forbidden"


async def test_a_page_cut_off_resumes_at_the_right_place_without_reloading(
    browser: Browser, conductor: ConductorProcess
) -> None:
    host, port = conductor.url.removeprefix("http://").rsplit(":", 1)
    link = TcpDelayProxy(host, int(port))
    link_port = await link.start()
    page = await open_page(browser, f"http://127.0.0.1:{link_port}/perform?part=pulses&token={TOKENS['performer']}")
    await page.evaluate("window.loadedOnce = true")
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    await boss.connect()
    assert (await boss.command("play"))["ok"]

    await link.close()  # the wifi drops
    await page.wait_for_selector("#banner.show", timeout=10_000)
    assert (await boss.command("seek", position=95))["ok"]  # the piece moves on meanwhile
    await asyncio.sleep(0.5)
    link = TcpDelayProxy(host, int(port), listen_port=link_port)
    await link.start()  # and comes back
    await page.wait_for_selector("#banner:not(.show)", state="attached", timeout=10_000)
    await page.wait_for_function("window.tutti.state.seq >= 2")
    assert await page.evaluate("window.loadedOnce") is True  # no reload
    await asyncio.sleep(0.5)
    assert await playhead_error(page, conductor) < 0.002
    await boss.close()
    await link.close()


async def test_a_throwing_sketch_does_not_stop_the_timeline(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "broken.js").write_text(
        "export default function (p, tutti) {\n"
        "  p.setup = () => p.createCanvas(tutti.width, tutti.height);\n"
        "  p.draw = () => { if (p.frameCount > 10) throw new Error('the composer divided by zero'); };\n"
        "}\n"
    )
    score = (SCORES / "demo.yaml").read_text().replace("sketches/ripples.js", str(tmp_path / "broken.js"))
    (tmp_path / "score.yaml").write_text(
        score.replace(
            "      - type: countdown\n    controls:\n      - {type: xy",
            "      - type: timeline\n        shapes: [{shape: bar, start: 0, end: 60}]\n"
            "      - type: countdown\n    controls:\n      - {type: xy",
        )
    )
    proc = ConductorProcess(write_concert(tmp_path, score=tmp_path / "score.yaml"), "--play")
    try:
        page = await open_page(browser, f"{proc.url}/perform?part=sketch&token={TOKENS['performer']}")
        await page.wait_for_selector(".sketch-error", timeout=10_000)
        assert "the composer divided by zero" in await page.inner_text(".sketch-error")
        frames, position = await page.evaluate("[window.tuttiView.frames, window.tuttiView.position]")
        await asyncio.sleep(0.5)
        frames2, position2 = await page.evaluate("[window.tuttiView.frames, window.tuttiView.position]")
        assert frames2 > frames + 10 and position2 > position + 0.3  # the other layers go on
        assert await playhead_error(page, proc) < 0.002
    finally:
        proc.stop()


async def test_audience_and_part_picker(browser: Browser, conductor: ConductorProcess) -> None:
    page = await open_page(browser, f"{conductor.url}/audience")  # the demo leaves the audience open
    assert await page.evaluate("window.tutti.you.role") == "audience"
    picker = await browser.new_page()
    await picker.goto(f"{conductor.url}/perform")
    await picker.wait_for_selector(".picker a")  # built once the score has been fetched
    links = await picker.eval_on_selector_all(".picker a", "as => as.map(a => a.getAttribute('href'))")
    assert links == ["?part=drones", "?part=pulses", "?part=sketch"]
    assert (await picker.goto(f"{conductor.url}/score-files/../concert.yaml")).status == 404
    assert (await picker.goto(f"{conductor.url}/score-files/sketches/ripples.js")).status == 200


async def test_a_plain_socketio_sketch_joins_and_follows(browser: Browser, conductor: ConductorProcess) -> None:
    """The documented example: a p5 sketch using only the standard socket.io 4 client."""
    page = await browser.new_page()
    await page.goto(f"{conductor.url}/examples/plain-socketio.html")
    await page.wait_for_function("() => window.sketchPosition !== undefined")
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    await boss.connect()
    assert (await boss.command("seek", position=30))["ok"]
    assert (await boss.command("play"))["ok"]
    await asyncio.sleep(1.0)
    wall, pos = await page.evaluate("[Date.now() / 1000, window.sketchPosition]")
    expected = conductor_position(conductor, wall, conductor.status())
    assert abs(pos - expected) < 0.05  # its simple clock and a frame's delay; Tutti's own views do better
    assert any(c["role"] == "audience" and c["name"] == "my sketch" for c in conductor.status()["clients"])
    await boss.close()


async def test_an_audience_page_let_go_under_overload_comes_back_by_itself(browser: Browser, tmp_path: Path) -> None:
    # As in test_gateway's overload test: a low limit, and a console asking for invitations.
    conductor = ConductorProcess(write_concert(tmp_path, overload_lag=0.005))
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    page = await browser.new_page()
    await page.add_init_script("window.tuttiOverloadRetry = [1, 2]")  # seconds, not a concert's 30-60
    try:
        await page.goto(f"{conductor.url}/audience")
        await page.wait_for_function("() => window.tutti && window.tutti.connected")
        await boss.connect()
        for _ in range(20):
            await asyncio.gather(*(boss.sio.call("invite", {"base": "http://x"}, timeout=10) for _ in range(20)))
            if not await page.evaluate("window.tutti.connected"):
                break
        assert not await page.evaluate("window.tutti.connected"), "the page was never let go"
        assert await page.evaluate("document.getElementById('banner').classList.contains('show')")
        assert "busy" in await page.inner_text("#banner")  # why, in words: not a lost connection
        # The conductor catches up once the invitations stop; the page comes back by itself.
        await page.wait_for_function("() => window.tutti.connected", timeout=20_000)
        assert not await page.evaluate("document.getElementById('banner').classList.contains('show')")
        assert conductor.status()["rejections"]["overloaded"] >= 1
    finally:
        await page.close()
        await boss.close()
        conductor.stop()
