"""How long a live edit takes to reach performer pages, with ``tutti serve --watch``.

    .venv/bin/python bench/live_edit.py [--pages 10] [--edits 3]

A playing piece of two parts, each running the openprocessing-style global-mode sketch
``scores/sketches/call-and-response.js`` (p5 1.x and 2.x), on ``--pages`` performer pages in
headless Chromium. The sketch file is edited ``--edits`` times, then the score once; for each
edit, the time from the file's write to each page showing the new version (its new sketch running,
or the new score drawn), and its two parts: from the write to the page's receipt of the new version
(the watch's look, ``tutti check``, the announcement), and from there to the new sketch having drawn
on the page. Printed: median and maximum over the pages for each edit, how many pages
reconnected (their socket changed) or reloaded, and the largest gap between a page's score
position and the conductor's after the edits (a jump would show here).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

from playwright.async_api import async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import CHROMIUM, CHROMIUM_ARGS, concert_file, percentile, running

ROOT = Path(__file__).resolve().parent.parent
LAYERS = (
    "    layers:\n      - {type: timeline, area: [0, 0.7, 1, 0.3], shapes: [{shape: bar, start: 0, end: 60}]}\n"
    '      - {type: sketch, src: talk.js, p5: "P5", area: [0, 0, 1, 0.7]}\n'
)
SCORE = (
    "title: Live edits\nduration: 600\nparts:\n"
    + "  - id: call\n    name: Call\n"
    + LAYERS.replace("P5", "1.x")
    + "  - id: response\n    name: Response\n"
    + LAYERS.replace("P5", "2.x")
)
SAMPLE = "[(performance.timeOrigin + performance.now()) / 1000, tutti.position(), tutti.socket.id, window.loadedOnce]"


async def main(pages_count: int, edits: int) -> None:
    concert = concert_file({"conductor": "c", "performer": "p"}, SCORE)
    folder = concert.parent
    sketch = folder / "talk.js"
    shutil.copy(ROOT / "scores" / "sketches" / "call-and-response.js", sketch)
    async with running("serve", str(concert), "--play", "--watch") as url, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = []
        for i in range(pages_count):
            page = await browser.new_page(viewport={"width": 1024, "height": 768})
            await page.goto(f"{url}/perform?part={('call', 'response')[i % 2]}&token=p&name=bench-{i}")
            await page.wait_for_function("() => window.tuttiView?.sketches[0]?.ready", timeout=60_000)
            await page.evaluate("window.loadedOnce = true")
            pages.append(page)
        sockets = [await p.evaluate("tutti.socket.id") for p in pages]
        await asyncio.sleep(2)  # every page's clock settled
        for n in range(1, edits + 2):
            score_edit = n == edits + 1
            if score_edit:
                path, text = folder / "score.yaml", (folder / "score.yaml").read_text().replace("end: 60}", "end: 90}")
            else:
                path, text = sketch, sketch.read_text().replace("heard", "heard!")
            written = time.time()
            path.write_text(text)
            for page in pages:
                await page.wait_for_function(f"tuttiView.edits >= {n}", timeout=30_000)
            times = [await p.evaluate("[tuttiView.receivedAt, tuttiView.shownAt]") for p in pages]
            shown = [s - written for _, s in times]
            received = [r - written for r, _ in times]
            on_page = [s - r for r, s in times]
            what = "score" if score_edit else "sketch"
            print(
                f"edit {n} ({what}): shown after median {percentile(shown, 0.5) * 1000:.0f} ms, "
                f"max {max(shown) * 1000:.0f} ms on {len(pages)} pages; of which checked and announced "
                f"(write to the page's receipt) median {percentile(received, 0.5) * 1000:.0f} ms, max "
                f"{max(received) * 1000:.0f} ms; on the page (new sketch running and drawn) median "
                f"{percentile(on_page, 0.5) * 1000:.0f} ms, max {max(on_page) * 1000:.0f} ms"
            )
            await asyncio.sleep(1)
        status_url = f"{url}/api/status"
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(status_url) as r:
            status = await r.json()
        from conductor.core.score import Score, load_score
        from conductor.core.transport import Transport

        transport = Transport(Score.model_validate(load_score(folder / "score.yaml").score.model_dump()))
        transport.restore(status["state"])
        gaps = []
        moved = 0
        for page, socket in zip(pages, sockets, strict=True):
            wall, pos, sid, loaded = await page.evaluate(SAMPLE)
            gaps.append(abs(pos - transport.position(wall + status["clock_minus_wall"])))
            moved += sid != socket or not loaded
        print(f"pages reconnected or reloaded: {moved} of {len(pages)}")
        print(f"largest gap between a page's position and the conductor's after the edits: {max(gaps) * 1000:.2f} ms")
        await browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--edits", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.pages, args.edits))
