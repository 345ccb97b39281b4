"""Screenshots of what people see, to be looked at: the performer view in each state (waiting,
count-in, playing, paused, looping in a rehearsal, ended, offline, refused) on an iPad both ways
and a phone, the console before the downbeat with a part missing and while rehearsing a loop
(iPad and phone), its audio links each way (none measured, measured, a link restarting) on an
iPad and a phone, the audience on a phone, a global-mode sketch (openprocessing.org style)
running, and one that stopped, with a live edit refused on the console and on the composer's page,
a part's sketch turned off by the conductor (its page, the console, the composer's page), and the
replay of a concert archive (``tutti replay``: the score and the scrub bar, and a recording that
cannot be played) on an iPad and a phone.

    .venv/bin/python -m bench.screenshots [--out test-output/screens]

It runs a real conductor on the demo score (loopback) and Debian's Chromium, and prints each file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright

from bench.harness import CHROMIUM, CHROMIUM_ARGS
from conductor.client import TuttiClient
from tests.conftest import ROOT, SCORES, TOKENS, ConductorProcess, write_concert
from tests.test_replay import make_archive, start_replay
from tests.test_sketch_frames import TROUBLES, part, talking_score

VIEWPORTS = {"ipad-landscape": (1180, 820), "ipad-portrait": (820, 1180), "phone": (390, 844)}


async def open_view(browser: Browser, url: str, size: tuple[int, int], ready: str = "window.tutti?.score") -> Page:
    page = await browser.new_page(viewport={"width": size[0], "height": size[1]}, device_scale_factor=1)
    await page.goto(url)
    if ready:
        await page.wait_for_function(f"() => {ready}", timeout=15_000)
    return page


async def shoot(pages: dict[str, Page], out: Path, state: str) -> list[Path]:
    written = []
    for name, page in pages.items():
        path = out / f"perform-{state}-{name}.png"
        await page.screenshot(path=str(path))
        written.append(path)
    return written


async def wait_phase(pages: dict[str, Page], phase: str) -> None:
    for page in pages.values():
        await page.wait_for_function(
            f"() => document.getElementById('phase').dataset.phase === '{phase}'", timeout=20_000
        )


def _link_feed(state: str) -> dict[str, object]:
    """The console's ``links`` (conductor/server/linkmetrics.py) for one state; the figures are made
    up to look like a run here (3 and 12 ms emulated each way), for the view, not a measurement."""
    if state == "none":
        return {"rows": [], "recent": {}, "concert": {}, "period_ms": 2.667}
    recent = [[1000.0 + t, 9.4 + 0.4 * (t % 7 == 0), 20.5 + 2.7 * (t % 11 == 0), 29.3] for t in range(300)]
    concert = [[t * 15.0, 9.0 + (t % 5) * 0.3, 20.0 + (t % 9) * 0.4, 29.3] for t in range(240)]
    row = {
        "link": "pku–ucas pair", "a": "pku", "b": "ucas", "pair": True, "state": "connected",
        "a_to_b_ms": 9.42, "b_to_a_ms": 20.51, "bound_ms": 0.31, "jitter_a_to_b_ms": 0.42,
        "jitter_b_to_a_ms": 2.71, "rtt_ms": 32.0, "check_ms": -0.6, "check_ok": True, "lost": 0,
        "underruns": 3, "overflows": 0, "restarts": 0, "queue_a_to_b": 2, "queue_a_to_b_ms": 5.3,
        "queue_b_to_a": 3, "queue_b_to_a_ms": 8.0,
    }  # fmt: skip
    if state == "restarting":
        recent = [*recent[:-20], *([[p[0], None, None, None] for p in recent[-20:]])]
        row = {**row, "state": "restarting", "b_to_a_ms": None, "check_ms": None, "check_ok": None, "lost": 41}
    return {"rows": [row], "recent": {row["link"]: recent}, "concert": {row["link"]: concert}, "period_ms": 2.667}


async def link_views(console: Page, out: Path) -> list[Path]:
    """The console's audio links, each way, in each state, on an iPad and a phone."""
    written = []
    for state in ("none", "measured", "restarting"):
        await console.evaluate(
            "async (links) => (await import('/clients/linkplots.js')).showLinks(links,"
            " document.getElementById('ways'), document.getElementById('wayplots'),"
            " document.getElementById('ways-hint'), links.rows.length)",
            _link_feed(state),
        )
        for name, (width, height) in (("ipad", (1024, 768)), ("phone", (390, 844))):
            await console.set_viewport_size({"width": width, "height": height})
            await console.evaluate("document.getElementById('wayplots').scrollIntoView({block: 'end'})")
            path = out / f"console-links-{state}-{name}.png"
            await console.screenshot(path=str(path))
            written.append(path)
    return written


async def main(out: Path) -> list[Path]:
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        conductor = ConductorProcess(write_concert(Path(tmp), lookahead=0.1))
        boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"], name="screenshots")
        try:
            await boss.connect()
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                parts = {"ipad-landscape": "pulses", "ipad-portrait": "pulses", "phone": "drones"}
                pages = {
                    name: await open_view(
                        browser,
                        f"{conductor.url}/perform?part={parts[name]}&token={TOKENS['performer']}&name=Ana",
                        size,
                    )
                    for name, size in VIEWPORTS.items()
                }
                await wait_phase(pages, "waiting")
                written += await shoot(pages, out, "waiting")

                console = await open_view(browser, f"{conductor.url}/console?token={TOKENS['conductor']}", (1180, 820))
                await console.wait_for_function(
                    "() => document.querySelector('#roster td.missing')", timeout=15_000
                )  # the sketch part has no performer
                await console.screenshot(path=str(out / "console-before-downbeat-ipad-landscape.png"), full_page=True)
                await console.set_viewport_size({"width": 820, "height": 1180})
                await console.screenshot(path=str(out / "console-before-downbeat-ipad-portrait.png"), full_page=True)
                await console.set_viewport_size({"width": 390, "height": 844})
                # (the go / no-go table, with nodes: bench/rehearsal.py --screens)
                await console.screenshot(path=str(out / "console-before-downbeat-phone.png"))
                written += [
                    out / "console-before-downbeat-ipad-landscape.png",
                    out / "console-before-downbeat-ipad-portrait.png",
                    out / "console-before-downbeat-phone.png",
                ]

                written += await link_views(console, out)

                await boss.command("seek", position=30.0)  # near "Flood": the countdown shows
                await boss.command("play", count_in=2)
                await wait_phase(pages, "count-in")
                written += await shoot(pages, out, "count-in")
                await wait_phase(pages, "playing")
                await asyncio.sleep(3.5)  # into the countdown's last ten seconds (a picture, not a test)
                written += await shoot(pages, out, "playing")
                await boss.command("pause")
                await wait_phase(pages, "paused")
                written += await shoot(pages, out, "paused")

                # Rehearsing: a loop of two bars and the click track on, on every view and the console.
                await boss.command("loop", bars=[13, 14], times=3)
                await boss.command("click", on=True, part="drones")
                await boss.command("play", count_in=0)
                await wait_phase(pages, "playing")
                for page in pages.values():
                    await page.wait_for_function("() => !document.getElementById('loopmark').hidden", timeout=10_000)
                written += await shoot(pages, out, "looping")
                for name, size in (("ipad-landscape", (1024, 768)), ("phone", (390, 844))):
                    await console.set_viewport_size({"width": size[0], "height": size[1]})
                    await console.wait_for_function(
                        "() => document.getElementById('rehearsal-state').textContent.includes('bars 13–14')"
                    )
                    path = out / f"console-looping-{name}.png"
                    await console.screenshot(path=str(path), full_page=True)
                    written.append(path)
                await boss.command("unloop")
                await boss.command("pause")
                await wait_phase(pages, "paused")

                audience = await open_view(browser, f"{conductor.url}/audience", VIEWPORTS["phone"])
                await audience.screenshot(path=str(out / "audience-phone.png"))
                written.append(out / "audience-phone.png")

                await boss.command("seek", position=179.0)
                await boss.command("play", count_in=0)
                await wait_phase(pages, "ended")
                written += await shoot(pages, out, "ended")

                refused = {"unknown-part": f"{conductor.url}/perform?part=nope&token={TOKENS['performer']}"}
                # after ten wrong performer tokens from this address, below (a right token still gets in)
                refused["rate-limited"] = f"{conductor.url}/perform?part=drones&token=guess"
                for what, url in refused.items():
                    if what == "rate-limited":
                        for _ in range(10):
                            with contextlib.suppress(ConnectionError):
                                await TuttiClient(conductor.url, "performer", "guess", part="drones").connect()
                    page = await open_view(browser, url, VIEWPORTS["ipad-portrait"], ready="")
                    await page.wait_for_selector("#notice", timeout=10_000)
                    path = out / f"perform-refused-{what}-ipad-portrait.png"
                    await page.screenshot(path=str(path))
                    written.append(path)

                await boss.close()
                conductor.stop()
                for page in pages.values():
                    await page.wait_for_selector("#banner.show", timeout=15_000)
                written += await shoot(pages, out, "offline")
                written += await replay_shots(browser, out)
                await browser.close()
        finally:
            conductor.stop()
    return written


async def compose_shots(browser: Browser, conductor: ConductorProcess, out: Path, state: str, shown: str) -> list[Path]:
    """The composer's page on an iPad and a phone, once ``shown`` (a JavaScript condition) holds."""
    written = []
    for name in ("ipad-landscape", "phone"):
        compose = await open_view(browser, f"{conductor.url}/compose?token={TOKENS['conductor']}", VIEWPORTS[name])
        await compose.wait_for_function(shown, timeout=30_000)
        written.append(out / f"compose-{state}-{name}.png")
        await compose.screenshot(path=str(written[-1]), full_page=True)
    return written


async def sketch_states(out: Path) -> list[Path]:
    """A global-mode sketch after another part's event reached it, and one that threw."""
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(SCORES / "sketches" / "call-and-response.js", folder / "talk.js")
        (folder / "throws.js").write_text(TROUBLES["throws.js"])
        parts = part("call", "talk.js", "1.x") + part("response", "talk.js", "2.x") + part("throws", "throws.js", "1.x")
        (folder / "score.yaml").write_text("title: Sketches\nduration: 120\nparts:\n" + parts)
        conductor = ConductorProcess(write_concert(folder, score=folder / "score.yaml"), "--play", "--watch")
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                base = f"{conductor.url}/perform?token={TOKENS['performer']}&name=Ana&part="
                ready = "window.tuttiView?.sketches[0]?.ready"
                call = await open_view(browser, base + "call", VIEWPORTS["ipad-landscape"], ready)
                pages = {
                    name: await open_view(browser, base + "response", size, ready) for name, size in VIEWPORTS.items()
                }
                for x in (300, 600, 900):
                    await call.mouse.click(x, 300)
                for page in pages.values():  # the three ripples reached every response page
                    await page.frames[1].wait_for_function("received.length === 3", timeout=5000)
                written += await shoot(pages, out, "global-sketch")
                stopped = {
                    name: await open_view(browser, base + "throws", size, ready) for name, size in VIEWPORTS.items()
                }
                for page in stopped.values():
                    await page.wait_for_selector(".sketch-error", timeout=10_000)
                written += await shoot(stopped, out, "sketch-stopped")
                (folder / "talk.js").write_text(
                    (folder / "talk.js").read_text().replace("function draw() {", "function draw() {{")
                )
                console = await open_view(browser, f"{conductor.url}/console?token={TOKENS['conductor']}", (1180, 820))
                await console.wait_for_function("document.getElementById('recent').textContent.includes('talk.js')")
                path = out / "console-edit-refused-ipad-landscape.png"
                await console.screenshot(path=str(path), full_page=True)
                written.append(path)
                shown = "[...document.querySelectorAll('.status')].every(s => /frames.s|stopped/.test(s.textContent))"
                written += await compose_shots(
                    browser, conductor, out, "edit-refused", f"!document.getElementById('refused').hidden && {shown}"
                )
                await browser.close()
        finally:
            conductor.stop()
    return written


async def sketch_off_states(out: Path) -> list[Path]:
    """A part's sketch turned off by the conductor: the performer's page (iPad both ways, phone), the
    console's Parts table with its Sketch on button, and the composer's page (iPad, phone)."""
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        conductor = ConductorProcess(write_concert(folder, score=talking_score(folder, "Sketches")), "--play")
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                base = f"{conductor.url}/perform?token={TOKENS['performer']}&name=Ana&part="
                ready = "window.tuttiView?.sketches[0]?.ready"
                pages = {name: await open_view(browser, base + "call", size, ready) for name, size in VIEWPORTS.items()}
                console = await open_view(browser, f"{conductor.url}/console?token={TOKENS['conductor']}", (1180, 820))
                await console.locator("#roster button[data-sketches=call]").click()
                for page in pages.values():
                    await page.wait_for_function("!document.getElementById('sketch-off').hidden", timeout=10_000)
                written += await shoot(pages, out, "sketch-off")
                await console.locator("#roster button[data-sketches=call]", has_text="Sketch on").wait_for()
                for name, size in (("ipad-landscape", (1180, 820)), ("phone", VIEWPORTS["phone"])):
                    await console.set_viewport_size({"width": size[0], "height": size[1]})
                    await console.locator("#roster").scroll_into_view_if_needed()
                    # a phone scrolls the table sideways to its last column: shown there
                    await console.evaluate("document.getElementById('roster').closest('.wide-table').scrollLeft = 1e6")
                    path = out / f"console-sketch-off-{name}.png"
                    await console.screenshot(path=str(path))
                    written.append(path)
                shown = (
                    "document.querySelector('[data-part=call] .status').textContent.includes('sketch off')"
                    " && /frames.s/.test(document.querySelector('[data-part=response] .status').textContent)"
                )
                written += await compose_shots(browser, conductor, out, "sketch-off", shown)
                await browser.close()
        finally:
            conductor.stop()
    return written


async def replay_shots(browser: Browser, out: Path) -> list[Path]:
    """``tutti replay`` of a small archive: the score moved to 6.25 s into the recording, and the
    same page when its mix.wav cannot be played."""
    written = []
    with tempfile.TemporaryDirectory() as folder:
        archive = make_archive(Path(folder))
        proc, url = start_replay(archive)
        try:
            for name, size in {"ipad": (1024, 768), "phone": VIEWPORTS["phone"]}.items():
                page = await open_view(browser, url, size, ready="!document.getElementById('play').disabled")
                await page.locator("#scrub").fill("6.25")
                await page.wait_for_function("() => Math.abs(replay.audio.currentTime - 6.25) < 0.01")
                written.append(out / f"replay-{name}.png")
                await page.screenshot(path=str(written[-1]))
            (archive / "mix.wav").write_bytes(b"not a sound")
            for name, size in {"ipad": (1024, 768), "phone": VIEWPORTS["phone"]}.items():
                page = await open_view(browser, url, size, ready="document.getElementById('banner').textContent")
                written.append(out / f"replay-bad-mix-{name}.png")
                await page.screenshot(path=str(written[-1]))
        finally:
            proc.terminate()
            proc.wait(10)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "test-output" / "screens")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(main(out)) + asyncio.run(sketch_states(out)) + asyncio.run(sketch_off_states(out)):
        print(path)
