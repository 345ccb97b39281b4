"""When cues sound: onsets recorded from a real scsynth, against the time each was scheduled for.

    .venv/bin/python bench/onsets.py [--seconds 30] [--json out.json]

One JACK server (dummy driver), one ``tutti node`` with its scsynth, a conductor playing a score
with a click every 0.25 s. A JACK-Client recorder (``conductor.jackio``) hears scsynth's output and
gives each onset's wall-clock time; the conductor's clock minus wall time turns the cues' conductor
times into wall-clock targets. The baseline, on the same scsynth in the same run, is python-osc
sending each click straight to scsynth as a bundle timetagged with its wall-clock target: what
scsynth and JACK do with a perfect timetag. The node moves each cue's timetag by where it has
measured that scsynth places one (``conductor/node/placement.py``), so its clicks should land nearer
their time than the baseline's. Also printed: the JACK xruns seen, and the errors of
clicks with no xrun in the 5 s before them (scsynth resets its clock filter on every xrun).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import concert_file, jack_server, node_agent, nodes_up, percentile, running, save  # noqa: E402
from conductor.client import TuttiClient  # noqa: E402
from conductor.core.osc import osc_bundle  # noqa: E402
from conductor.node.jackio import Recorder  # noqa: E402

JACK = f"tutti-onsets-{os.getpid()}"
TOKEN = "bench"
PORT = 57690
SPACING = 0.25
CLICK = ["tutti_click", -1, 0, 0]
CALM = 5.0  # seconds without an xrun before a click counts as undisturbed


def summary(errors: list[float]) -> dict[str, float]:
    magnitudes = [abs(e) * 1000 for e in errors]
    return {
        "n": len(errors),
        "median_ms": statistics.median(e * 1000 for e in errors) if errors else float("nan"),
        "p50_abs_ms": statistics.median(magnitudes) if errors else float("nan"),
        "p99_abs_ms": percentile(magnitudes, 0.99) if errors else float("nan"),
        "max_abs_ms": max(magnitudes, default=float("nan")),
    }


def errors_of(recorder: Recorder, targets: list[float]) -> tuple[list[float], list[float], int]:
    """Each target's nearest onset minus the target; and those of targets after CALM quiet seconds."""
    heard = [o.time for o in recorder.onsets()]
    errors, calm = [], []
    for target in targets:
        nearest = min(heard, key=lambda h: abs(h - target), default=None)
        if nearest is None or abs(nearest - target) > SPACING / 2:
            print(f"click {targets.index(target) + 1} not heard within {SPACING / 2} s of its time", file=sys.stderr)
            continue
        errors.append(nearest - target)
        if not any(target - CALM < x <= target for x in recorder.xruns):
            calm.append(nearest - target)
    return errors, calm, len(targets) - len(errors)


async def tutti_run(url: str, clicks: int) -> list[float]:
    """Play the score; returns the clicks' wall-clock targets."""
    boss = TuttiClient(url, "conductor", TOKEN)
    await boss.connect()
    try:
        assert (await boss.command("play"))["ok"]
        async with aiohttp.ClientSession() as http, http.get(f"{url}/api/status") as r:
            status = await r.json()
        start = status["state"]["segments"][-1]
        targets = [start["t"] + (k + 1) * SPACING - status["clock_minus_wall"] for k in range(clicks)]
        await asyncio.sleep(targets[-1] + 0.5 - time.time())
        assert (await boss.command("stop"))["ok"]
        return targets
    finally:
        await boss.close()


async def direct_run(clicks: int) -> list[float]:
    """python-osc straight to scsynth: each click a bundle timetagged 0.3 s ahead, sent on time."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first = time.time() + 0.5
    targets = [first + k * SPACING for k in range(clicks)]
    for target in targets:
        await asyncio.sleep(max(0.0, target - 0.3 - time.time()))
        sock.sendto(osc_bundle(target, "/s_new", CLICK), ("127.0.0.1", PORT))
    await asyncio.sleep(targets[-1] + 0.5 - time.time())
    sock.close()
    return targets


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()
    clicks = int(args.seconds / SPACING)
    cues = "".join(
        f"  - {{at: {(k + 1) * SPACING}, target: all, address: /s_new, args: {json.dumps(CLICK)}}}\n"
        for k in range(clicks)
    )
    score = f"title: Clicks\nduration: {args.seconds + 5}\nparts:\n  - {{id: one, name: One}}\ncues:\n{cues}"
    concert = concert_file({"conductor": TOKEN, "node": TOKEN}, score, lookahead=0.3)
    results: dict[str, Any] = {}
    async with jack_server(JACK), running("serve", str(concert)) as url:
        agent = await node_agent(url, TOKEN, "n1", PORT, JACK)
        try:
            await nodes_up(url, 1)
            recorder = Recorder(JACK, "onset-recorder")
            recorder.listen_to("scsynth-n1:out_1")
            for name, run in (("direct", lambda: direct_run(clicks)), ("tutti", lambda: tutti_run(url, clicks))):
                recorder.clear()
                targets = await run()
                errors, calm, missed = errors_of(recorder, targets)
                results[name] = {
                    "all": summary(errors),
                    "calm": summary(calm),
                    "missed": missed,
                    "xruns": len(recorder.xruns),
                }
            recorder.close()
        finally:
            agent.terminate()
            await agent.wait()

    print(f"{clicks} clicks each; error = heard minus scheduled, ms")
    print(f"{'path':<8}{'clicks':<8}{'n':>5}{'median':>9}{'p50 |e|':>9}{'p99 |e|':>9}{'max |e|':>9}", end="")
    print(f"{'xruns':>7}{'missed':>8}{'p99 vs direct':>15}")
    for name, r in results.items():
        for subset in ("all", "calm"):
            s = r[subset]
            base = results["direct"][subset]["p99_abs_ms"]
            print(
                f"{name:<8}{subset:<8}{s['n']:>5}{s['median_ms']:9.3f}{s['p50_abs_ms']:9.3f}{s['p99_abs_ms']:9.3f}"
                f"{s['max_abs_ms']:9.3f}{r['xruns']:>7}{r['missed']:>8}{s['p99_abs_ms'] / base:14.2f}x"
            )
    save(args.json, results)


if __name__ == "__main__":
    asyncio.run(main())
