"""What people see at the edges of a concert, read off real Chromium pages at iPad (both ways) and
phone sizes: text, visibility and where things are on the screen, not only the DOM.

One conductor and one browser serve each test's pages, to keep the suite quick.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from conductor.client import TuttiClient
from tests.conftest import SCORES, TOKENS, ConductorProcess, write_concert

pytestmark = pytest.mark.integration

VIEWPORTS = {"ipad-landscape": (1180, 820), "ipad-portrait": (820, 1180), "phone": (390, 844)}


async def open_at(browser: Browser, url: str, size: tuple[int, int], ready: str | None = "window.tutti?.score") -> Page:
    page = await browser.new_page(viewport={"width": size[0], "height": size[1]})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(url)
    if ready:
        await page.wait_for_function(f"() => {ready}", timeout=15_000)
    return page


async def box(page: Page, selector: str) -> dict[str, float]:
    found = await page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not on screen"
    return found


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


async def shows(page: Page, selector: str, text: str) -> None:
    """Wait until the element is visible and its text (as rendered) contains ``text``."""
    await page.locator(selector).filter(has_text=text).first.wait_for(state="visible", timeout=15_000)


async def until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if result := check():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_performer_view_in_every_state_on_ipads_and_a_phone(browser: Browser, tmp_path: Path) -> None:
    conductor = ConductorProcess(write_concert(tmp_path))
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"], name="test console")
    try:
        await boss.connect()
        link = f"{conductor.url}/perform?part=pulses&token={TOKENS['performer']}&name=Ana"
        pages = {name: await open_at(browser, link, size) for name, size in VIEWPORTS.items()}

        for name, page in pages.items():
            width, height = VIEWPORTS[name]
            await shows(page, "#phase", "Waiting for the downbeat")
            assert await page.inner_text("#barbeat") == "1.1"
            assert await page.inner_text("#clock") == "0:00"
            # Readable at arm's length: the position is large, and the bar never leaves the screen.
            size = await page.eval_on_selector("#barbeat", "e => parseFloat(getComputedStyle(e).fontSize)")
            assert size >= 32, f"{name}: position at {size}px"
            bar = await box(page, "#stagebar")
            assert bar["x"] >= 0 and bar["x"] + bar["width"] <= width and bar["y"] + bar["height"] < height * 0.25
            # The controls sit beside or under the score, never over it (its text layer included).
            stage, controls = await box(page, "#stage"), await box(page, "#controls")
            assert not overlap(stage, controls), f"{name}: controls cover the score"
            assert not overlap(bar, stage) and not overlap(bar, controls)
            assert (
                controls["x"] + controls["width"] <= width + 0.5 and controls["y"] + controls["height"] <= height + 0.5
            )

        assert (await boss.command("seek", position=30.0))["ok"]
        assert (await boss.command("play", count_in=1))["ok"]  # a bar of clicks: 3.3 s at 72 bpm
        for page in pages.values():
            await shows(page, "#phase", "Count-in")
            beats = await page.inner_text("#countin")
            assert beats in {"1", "2", "3", "4"} and await page.is_visible("#countin")
        for page in pages.values():
            await shows(page, "#phase", "Playing")
            assert not await page.is_visible("#countin")
            assert (await page.inner_text("#barbeat")).startswith("10.")  # 0:30 is bar 10 at 72 bpm
            await shows(page, "#section", "Ebb")

        assert (await boss.command("pause"))["ok"]
        for page in pages.values():
            await shows(page, "#phase", "Paused")
        assert (await boss.command("pause"))["code"] == "unchanged"  # not journalled twice

        assert (await boss.command("seek", position=179.0))["ok"]
        assert (await boss.command("play", count_in=0))["ok"]
        for name, page in pages.items():
            await shows(page, "#phase", "End")
            await shows(page, "#countin", "End of the piece")
            assert await page.inner_text("#clock") == "3:00"
            frames = await page.evaluate("window.tuttiView.frames")
            await page.wait_for_function(f"window.tuttiView.frames > {frames + 5}")
            assert await page.evaluate("window.tuttiView.position") == 180  # it stays at the end
            assert not page.errors, f"{name}: {page.errors}"  # type: ignore[attr-defined]

        # Refusals in words. A part that does not exist: say so, and offer the parts (keeping the token).
        for name, size in VIEWPORTS.items():
            wrong = await open_at(browser, f"{conductor.url}/perform?part=nope&token={TOKENS['performer']}", size, None)
            await shows(wrong, "#notice h1", "There is no part “nope”")
            await shows(wrong, "#notice", "drones, pulses, sketch")
            for part in ("#notice h1", "#notice .todo", "#notice a"):
                seen = await box(wrong, part)
                assert seen["x"] >= 0 and seen["x"] + seen["width"] <= size[0], f"{name}: {part} runs off the screen"
            href = await wrong.get_attribute("#notice a", "href")
            assert href is not None and "part=" not in href and f"token={TOKENS['performer']}" in href
            await wrong.close()
        # A page that loaded but cannot reach the conductor (its Socket.IO blocked) says so, and keeps trying.
        cut_off = await browser.new_page(viewport={"width": 390, "height": 844})
        await cut_off.route_web_socket(re.compile(r"/socket\.io/"), lambda ws: ws.close())
        await cut_off.goto(link)
        await shows(cut_off, "#notice h1", "Cannot reach the conductor")
        await shows(cut_off, "#notice .todo", "keeps trying")
        # Too many wrong performer tokens from this address: a page with a wrong one too says why and
        # counts down to its next try (a page with the right token still gets in).
        for _ in range(10):
            with pytest.raises(ConnectionError):
                await TuttiClient(conductor.url, "performer", "guess", part="drones").connect()
        guessed = f"{conductor.url}/perform?part=drones&token=guess"
        limited = await open_at(browser, guessed, VIEWPORTS["ipad-portrait"], None)
        await shows(limited, "#notice h1", "Too many tries from this device")
        await shows(limited, "#notice .retry", "Trying again in")
        assert await limited.is_visible("#notice .todo")

        # The conductor goes away: the banner says so without covering the position.
        await boss.close()
        conductor.stop()
        for name, page in pages.items():
            await shows(page, "#banner", "Disconnected from the conductor")
            banner = await box(page, "#banner")
            for part in ("#barbeat", "#clock", "#phase"):
                assert not overlap(banner, await box(page, part)), f"{name}: the banner covers {part}"
    finally:
        await boss.close()
        conductor.stop()


async def test_console_before_the_downbeat(browser: Browser, tmp_path: Path) -> None:
    conductor = ConductorProcess(write_concert(tmp_path))
    base = conductor.url
    try:
        console = await open_at(browser, f"{base}/console?token={TOKENS['conductor']}", VIEWPORTS["ipad-landscape"])
        # A performer who came from a QR code is asked their name, beside the clock.
        drones = await open_at(browser, f"{base}/perform?part=drones&token={TOKENS['performer']}", (1180, 820))
        await drones.wait_for_selector("#name-input", state="visible")
        await drones.fill("#name-input", "Ana")
        await drones.press("#name-input", "Enter")
        await drones.wait_for_selector("#name", state="hidden")
        pulses = await open_at(browser, f"{base}/perform?part=pulses&token={TOKENS['performer']}&name=Ben", (820, 1180))

        # The roster by part: who plays what, and the part nobody plays.
        await shows(console, "#roster tr", "Ana")
        await shows(console, "#roster tr", "Ben")
        await shows(console, "#roster tr:has-text('Sketch') td.waiting", "no performer yet")
        await pulses.close()  # a performer drops: the part says so rather than vanishing
        await shows(console, "#roster tr:has-text('Pulses') td.missing", "missing for")
        await shows(console, "#phase", "waiting for the downbeat")

        # Seek by bar; an ambiguous time is questioned, not guessed; each refusal is listed once.
        await console.fill("#seek", "1.30")
        await console.press("#seek", "Enter")
        await shows(console, "#errors li", "could be minutes or seconds: write 1:30 or 1.3")
        await console.fill("#tempo", "0")
        await console.press("#tempo", "Enter")
        await shows(console, "#errors li", "tempo: bpm: must be more than 0")
        await console.fill("#seek", "b13")
        await console.press("#seek", "Enter")
        await shows(console, "#seek-out", "→ 0:40.0, bar 13.1")
        assert conductor.status()["state"]["segments"][-1]["pos"] == 40
        assert await console.locator("#errors li", has_text="bpm").count() == 1
        await shows(console, "#recent li", "console · command: bpm: must be more than 0")

        # Stop asks first, and does nothing on the first press.
        seq = conductor.status()["state"]["seq"]
        await console.click("#stop")
        await shows(console, "#stop", "Press again")
        assert conductor.status()["state"]["seq"] == seq
        await console.click("#stop")
        await until(lambda: conductor.status()["state"]["seq"] == seq + 1, "the stop")
        assert conductor.status()["state"]["segments"][-1]["pos"] == 0

        # Space plays and pauses; the scrub bar seeks where it is clicked.
        await console.locator("body").press(" ")
        await until(lambda: conductor.status()["state"]["segments"][-1]["playing"], "play from the space bar")
        await console.wait_for_function("window.tutti.goingToPlay()")  # the page has the play too
        await console.locator("body").press(" ")
        await until(lambda: not conductor.status()["state"]["segments"][-1]["playing"], "pause from the space bar")
        scrub = await box(console, "#scrub")
        await console.mouse.click(scrub["x"] + scrub["width"] / 2, scrub["y"] + scrub["height"] / 2)
        await until(lambda: abs(conductor.status()["state"]["segments"][-1]["pos"] - 90) < 3, "a seek to the middle")

        # A sound no node would play is refused with its reason.
        await console.click("text=Play sound")
        await shows(console, "#errors li", "sound: no node has joined: nothing would play it")

        # A control with no parameter still reaches the console.
        await drones.close()
        accents = await open_at(
            browser, f"{base}/perform?part=pulses&token={TOKENS['performer']}&name=Ben", (1180, 820)
        )
        await accents.click("[data-control=accent] button")
        await shows(console, "#controls", "pulses/accent: true")

        # Invitations from a loopback address: the console warns that no iPad can open them.
        await console.click("#invite")
        await shows(console, "#invites-warning", "loopback address: no iPad or phone can open them")
        await console.click("#invites-close")

        # iPad portrait: nothing is cut off at the right.
        await console.set_viewport_size({"width": 820, "height": 1180})
        assert await console.evaluate("document.documentElement.scrollWidth") <= 820
        for table in ("#roster", "#clients"):
            found = await console.locator(table).evaluate("e => e.closest('.wide-table').getBoundingClientRect().right")
            assert found <= 820
    finally:
        conductor.stop()


async def test_audience_home_and_picker_on_a_phone(browser: Browser, tmp_path: Path) -> None:
    conductor = ConductorProcess(write_concert(tmp_path))
    try:
        audience = await open_at(browser, f"{conductor.url}/audience", VIEWPORTS["phone"])
        # The sketch part is drawn by its sketch in its own row, inside the screen.
        sketch = await box(audience, ".sketch-layer")
        assert sketch["width"] == 390 and sketch["height"] > 100 and sketch["y"] + sketch["height"] <= 844 + 1
        await audience.wait_for_function("document.querySelector('.sketch-layer canvas')?.width > 0")
        assert await audience.evaluate("document.documentElement.scrollWidth") <= 390

        home = await open_at(browser, f"{conductor.url}/", VIEWPORTS["phone"], None)
        hrefs = await home.eval_on_selector_all("nav a", "as => as.map(a => a.getAttribute('href'))")
        assert hrefs == ["/perform", "/audience", "/console"]
        picker = await open_at(browser, f"{conductor.url}/perform?token=abc", VIEWPORTS["phone"], None)
        await picker.wait_for_selector(".picker a")
        links = await picker.eval_on_selector_all(".picker a", "as => as.map(a => a.getAttribute('href'))")
        assert links == ["?token=abc&part=drones", "?token=abc&part=pulses", "?token=abc&part=sketch"]
    finally:
        conductor.stop()


SKETCH = """export default function (p, tutti) {
  p.setup = () => p.createCanvas(tutti.width, tutti.height);
  p.draw = () => p.background(20, 40, 60);
  p.mousePressed = () => { throw new Error("the composer's touch handler broke"); };
}
"""


async def test_a_sketch_follows_rotation_and_its_errors_stay_in_its_layer(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "touchy.js").write_text(SKETCH)
    score = (
        (SCORES / "demo.yaml")
        .read_text()
        .replace("src: sketches/ripples.js", "src: touchy.js\n        area: [0, 0.5, 1, 0.5]")
    )
    (tmp_path / "score.yaml").write_text(score)
    conductor = ConductorProcess(write_concert(tmp_path, score=tmp_path / "score.yaml"))
    try:
        page = await open_at(
            browser, f"{conductor.url}/perform?part=sketch&token={TOKENS['performer']}&name=Cy", (1180, 820)
        )
        canvas = ".sketch-layer canvas"
        await page.wait_for_selector(canvas)
        layer = await box(page, ".sketch-layer")
        assert abs((await box(page, canvas))["width"] - layer["width"]) <= 1
        # Turned to portrait: the layer and the sketch's canvas follow.
        await page.set_viewport_size({"width": 820, "height": 1180})
        await page.wait_for_function(
            "(() => { const l = document.querySelector('.sketch-layer'), c = l.querySelector('canvas');"
            " return l.clientWidth === 820 && Math.abs(c.clientHeight - l.clientHeight) <= 1"
            " && Math.abs(c.clientWidth - l.clientWidth) <= 1; })()"
        )
        turned = await box(page, ".sketch-layer")
        assert turned["height"] != layer["height"]
        # A throwing touch handler: the error is a line in the sketch's own layer, and the console hears of it.
        await page.mouse.click(turned["x"] + turned["width"] / 2, turned["y"] + turned["height"] / 2)
        await shows(page, ".sketch-error", "the composer's touch handler broke")
        note = await box(page, ".sketch-error")
        assert overlap(note, turned) and note["height"] < turned["height"] / 3
        assert await page.is_visible("#barbeat") and await page.is_visible("#controls")
        await until(lambda: conductor.status()["rejections"].get("page_problem") == 1, "the problem reported")
    finally:
        conductor.stop()
