"""Per-page clock error of Tutti's performer view in headless Chromium, for 1, 10 and 50 pages.

    .venv/bin/python bench/browser_clock.py [--pages 1 10 50] [--settle 10] [--json out.json]

Each page is a performer view of the demo score, syncing as in a concert. After ``--settle``
seconds every page is sampled five times: its estimate of conductor time against the truth
(the page's wall clock plus the conductor's reported clock-minus-wall; both read the same system
clock). The same pages' recorded exchanges are also scored by two common rules as baselines in
the same run: minimum round trip, and the `timesync` npm library's (last 5, drop round trips
above median + sd, mean). Printed: median and p99 of |error| in ms over all samples.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
from playwright.async_api import async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import CHROMIUM, CHROMIUM_ARGS, concert_file, report, running

ROOT = Path(__file__).resolve().parent.parent
PAGE_SAMPLE = """() => {
  const c = window.tutti.clock;
  const wall = (performance.timeOrigin + performance.now()) / 1000;
  const est = c.now();
  const ex = c.exchanges;
  const best = ex.reduce((a, e) => (e.rtt < a.rtt ? e : a));
  const last = ex.slice(-5);
  const rtts = last.map((e) => e.rtt);
  const mean = rtts.reduce((a, b) => a + b) / rtts.length;
  const sd = Math.sqrt(rtts.reduce((a, b) => a + (b - mean) ** 2, 0) / rtts.length);
  const sorted = [...rtts].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  const kept = last.filter((e) => e.rtt <= median + sd);
  const ts = kept.reduce((a, e) => a + (e.up - e.down) / 2, 0) / kept.length;
  return { wall, tutti: est - wall, min_rtt: (best.up - best.down) / 2, timesync: ts };
}"""


async def measure(counts: list[int], settle: float) -> dict[int, dict[str, list[float]]]:
    results = {}
    concert = str(concert_file({"conductor": "b", "performer": "p"}))
    async with running("serve", concert, "--play") as url, async_playwright() as p, aiohttp.ClientSession() as http:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for count in counts:
            context = await browser.new_context(viewport={"width": 640, "height": 480})
            pages = []
            for i in range(count):
                page = await context.new_page()
                await page.goto(f"{url}/perform?part={('drones', 'pulses')[i % 2]}&token=p&name=bench-{i}")
                pages.append(page)
            for page in pages:
                await page.wait_for_function("() => window.tutti && window.tutti.clock.samples >= 8", timeout=60_000)
            await asyncio.sleep(settle)
            errors: dict[str, list[float]] = {"tutti": [], "min_rtt": [], "timesync": []}
            for _ in range(5):
                async with http.get(url + "/api/status") as r:
                    truth = (await r.json())["clock_minus_wall"]
                for page in pages:
                    sample = await page.evaluate(PAGE_SAMPLE)
                    for rule in errors:
                        errors[rule].append(abs(sample[rule] - truth) * 1000)
                await asyncio.sleep(1)
            results[count] = errors
            await context.close()
        await browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of syncing before sampling")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = asyncio.run(measure(args.pages, args.settle))
    report("browser clock error against the conductor (|error| in ms, 5 samples per page)", "pages", results, args.json)


if __name__ == "__main__":
    main()
