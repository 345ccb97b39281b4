"""Screenshots of what people see, to be looked at: the performer view in each state (waiting,
count-in, playing, paused, ended, offline, refused) on an iPad both ways and a phone, the console
before the downbeat with a part missing, and the audience on a phone.

    .venv/bin/python -m bench.screenshots [--out test-output/screens]

It runs a real conductor on the demo score (loopback) and Debian's Chromium, and prints each file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright

from bench.harness import CHROMIUM, CHROMIUM_ARGS
from conductor.client import TuttiClient
from tests.conftest import ROOT, TOKENS, ConductorProcess, write_concert

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
                await browser.close()
        finally:
            conductor.stop()
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "test-output" / "screens")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(main(out)):
        print(path)
