"""Global-mode sketches in headless Chromium: how close a sketch's clock is to the conductor's, and
how close to its time a timed sketch event fires on another part's page.

    .venv/bin/python bench/sketch_timing.py [--events 20]

Two performer pages of a playing piece run ``scores/sketches/call-and-response.js`` (p5 1.x and
2.x), each in its sandboxed frame. The clock: each frame's ``tutti.time()`` against the conductor's
position at the same wall-clock instant (both read the system clock), 20 samples a frame. The
events: ``--events`` times, one part's sketch sends ``tutti.send("cue", …, {at: now + 0.3})`` to the
other; the receiving frame records the conductor's position when it fires (its wall clock and the
conductor's state). Printed: median, p99 and max of |error| in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import CHROMIUM, CHROMIUM_ARGS, percentile
from tests.conftest import ConductorProcess, write_concert
from tests.test_browser import conductor_position
from tests.test_sketch_frames import clock_error, performer, talking_score


async def main(events: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        conductor = ConductorProcess(write_concert(folder, score=talking_score(folder, "Timing", 600)), "--play")
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                (_, call), (_, response) = [await performer(browser, conductor, p) for p in ("call", "response")]
                await asyncio.sleep(3)  # past the first bursts of clock exchanges
                clock = [await clock_error(frame, conductor) for frame in (call, response) for _ in range(20)]
                listen = "tutti.on('c', () => cues.push((performance.timeOrigin + performance.now()) / 1000))"
                await response.evaluate(f"window.cues = []; {listen}")
                fired = []
                for n in range(events):
                    send = "async () => { const at = tutti.time() + 0.3; return [at, await tutti.send('c', 1, {at})]; }"
                    at, answer = await call.evaluate(send)
                    assert answer["ok"], answer
                    await response.wait_for_function(f"cues.length === {n + 1}", timeout=5000)
                    wall = await response.evaluate(f"cues[{n}]")
                    fired.append(abs(conductor_position(conductor, wall, conductor.status()) - at))
                await browser.close()
        finally:
            conductor.stop()
    for what, values in (("sketch clock vs conductor", clock), ("timed event fired vs its time", fired)):
        ms = [v * 1000 for v in values]
        spread = f"median {percentile(ms, 0.5):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, max {max(ms):.2f} ms"
        print(f"{what}: {spread} ({len(ms)} samples)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20)
    asyncio.run(main(parser.parse_args().events))
