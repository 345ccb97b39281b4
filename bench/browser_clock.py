"""Per-page clock error of Tutti's performer view in headless Chromium, beside the timesync library.

    .venv/bin/python bench/browser_clock.py [--pages 1 10] [--settle 12] [--json out.json]

Each page is a performer view of the demo score, syncing as in a concert. Beside it, in the same
page and over the same Socket.IO connection, runs the `timesync` npm library (what Drawsocket
uses; its defaults, with a sync every 10 s), asking the conductor's own ``sync`` event. Each
page count runs on loopback, then through ``tutti emulate`` adding 0-20 ms of random delay each
way, so both estimators see the same jitter.

After ``--settle`` seconds every page is sampled five times: each estimate of conductor time
against the truth (the page's wall clock plus the conductor's reported clock-minus-wall; both read
the same system clock). A third rule, minimum round trip, is applied to Tutti's recorded
exchanges. Printed: median and p99 of |error| in ms over all samples.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
from playwright.async_api import Page, async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import CHROMIUM, CHROMIUM_ARGS, concert_file, report, running

ROOT = Path(__file__).resolve().parent.parent
TIMESYNC = ROOT / "bench" / "node" / "node_modules" / "timesync" / "dist" / "timesync.js"
START_TIMESYNC = """() => {
  const socket = window.tutti.socket;
  const now = () => performance.timeOrigin + performance.now();
  const ts = timesync.create({ server: "conductor", interval: 10000, now });
  // timesync's transport: the conductor's sync event; its answer is the conductor's time in ms.
  ts.send = (to, data, timeout) =>
    socket.timeout(timeout).emitWithAck("sync", performance.now() / 1000).then((reply) => {
      ts.receive(to, { jsonrpc: "2.0", id: data.id, result: ((reply[1] + reply[2]) / 2) * 1000 });
    });
  window.timesyncBench = ts;
}"""
PAGE_SAMPLE = """() => {
  const c = window.tutti.clock;
  const wall = (performance.timeOrigin + performance.now()) / 1000;
  const est = c.now();
  const best = c.exchanges.reduce((a, e) => (e.rtt < a.rtt ? e : a));
  const timesync = window.timesyncBench.now() / 1000 - wall;
  return { wall, tutti: est - wall, timesync, min_rtt: (best.up - best.down) / 2 };
}"""


async def open_pages(context: object, url: str, count: int) -> list[Page]:
    pages = []
    for i in range(count):
        page = await context.new_page()  # type: ignore[attr-defined]
        await page.goto(f"{url}/perform?part={('drones', 'pulses')[i % 2]}&token=p&name=bench-{i}")
        await page.wait_for_function("() => window.tutti && window.tutti.socket.connected", timeout=60_000)
        await page.add_script_tag(path=str(TIMESYNC))
        await page.evaluate(START_TIMESYNC)
        pages.append(page)
    for page in pages:
        await page.wait_for_function("() => window.tutti.clock.samples >= 8", timeout=60_000)
    return pages


async def measure(counts: list[int], settle: float) -> dict[str, dict[str, list[float]]]:
    results = {}
    concert = str(concert_file({"conductor": "b", "performer": "p"}))
    async with running("serve", concert, "--play") as url, async_playwright() as p, aiohttp.ClientSession() as http:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        host_port = url.removeprefix("http://")
        async with running("emulate", "--to", host_port, "--jitter", "0.020", "--seed", "1") as link:
            for case, page_url in (("loopback", url), ("0-20 ms", "http://127.0.0.1:" + link.rsplit(":", 1)[1])):
                for count in counts:
                    context = await browser.new_context(viewport={"width": 640, "height": 480})
                    pages = await open_pages(context, page_url, count)
                    await asyncio.sleep(settle)
                    errors: dict[str, list[float]] = {"tutti": [], "timesync": [], "min_rtt": []}
                    for _ in range(5):
                        async with http.get(url + "/api/status") as r:
                            truth = (await r.json())["clock_minus_wall"]
                        for page in pages:
                            sample = await page.evaluate(PAGE_SAMPLE)
                            for rule in errors:
                                errors[rule].append(abs(sample[rule] - truth) * 1000)
                        await asyncio.sleep(1)
                    results[f"{count}, {case}"] = errors
                    await context.close()
        await browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--settle", type=float, default=12.0, help="seconds of syncing before sampling")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = asyncio.run(measure(args.pages, args.settle))
    title = "browser clock error against the conductor (|error| in ms, 5 samples per page)"
    report(title, "pages, link", results, args.json)


if __name__ == "__main__":
    main()
