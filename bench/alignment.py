"""Onsets across three emulated sites: Tutti's ``together`` against naive relay, in one run.

    .venv/bin/python bench/alignment.py [--cues 100] [--json out.json]

Three node agents, each with its own scsynth on one JACK server (so one recorder hears all three),
reach the conductor through emulated links of 2, 15 and 40 ms one way plus up to 5 ms of jitter
(``conductor.emulate``). The score has a click every 0.25 s for every site. It is played twice:

- ``together``: each cue is sent ahead, within the lookahead the conductor computes from the
  sites' delays, and each node timetags it in its own clock;
- ``naive relay``: the same score with ``schedule: immediate``: each cue is sent at its time and
  played when it arrives, as a plain relay of messages would.

Per cue: the spread of its three onsets (latest minus earliest), and each onset's error against
the cue's time. Printed as median, p99 and max, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
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
from conductor.node.jackio import Recorder  # noqa: E402
from conductor.tools.emulate import TcpDelayProxy  # noqa: E402

DELAYS = {"a": 0.002, "b": 0.015, "c": 0.040}
JITTER = 0.005
SPACING = 0.25
TOKEN = "bench"


def score(cues: int, schedule: str) -> str:
    head = f"title: Alignment\nduration: {cues * SPACING + 5}\nschedule: {schedule}\nparts:\n"
    parts = "".join(f"  - {{id: p{s}, name: P{s}, site: {s}}}\n" for s in DELAYS)
    clicks = "".join(
        f"  - {{at: {(k + 1) * SPACING}, target: all, address: /s_new, args: [tutti_click, -1, 0, 0]}}\n"
        for k in range(cues)
    )
    return head + parts + "cues:\n" + clicks


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"median": statistics.median(ms), "p99": percentile(ms, 0.99), "max": max(ms), "n": len(ms)}


async def run(schedule: str, cues: int) -> dict[str, Any]:
    jack = f"tutti-align-{os.getpid()}"
    concert = concert_file({"conductor": TOKEN, "node": TOKEN}, score(cues, schedule), lookahead=0.01)
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(running("serve", str(concert)))
        await stack.enter_async_context(jack_server(jack))
        host, port = url.removeprefix("http://").split(":")
        agents = []
        try:
            for i, (site, delay) in enumerate(DELAYS.items()):
                proxy = TcpDelayProxy(host, int(port), delay=delay, jitter=JITTER, seed=i)
                await proxy.start()
                stack.push_async_callback(proxy.close)
                agents.append(
                    await node_agent(
                        f"http://127.0.0.1:{proxy.port}", TOKEN, f"n{site}", 57600 + i, jack, "--site", site
                    )
                )
            await nodes_up(url, len(DELAYS))
            recorder = Recorder(jack, "alignment-recorder", ports=len(DELAYS))
            for i, site in enumerate(DELAYS):
                recorder.listen_to(f"scsynth-n{site}:out_1", i)
            boss = TuttiClient(url, "conductor", TOKEN)
            await boss.connect()
            assert (await boss.command("play"))["ok"]
            async with aiohttp.ClientSession() as http, http.get(f"{url}/api/status") as r:
                status = await r.json()
            zero = status["state"]["segments"][-1]["t"] - status["clock_minus_wall"]
            lookahead = status["lookahead"]["value"]
            await asyncio.sleep(zero + (cues + 1) * SPACING + 0.5 - time.time())
            await boss.close()
            heard = [[o.time for o in recorder.onsets(port=i)] for i in range(len(DELAYS))]
            recorder.close()
        finally:
            for agent in agents:
                agent.terminate()
                await agent.wait()
    spreads, errors, missed = [], [], 0
    for k in range(cues):
        target = zero + (k + 1) * SPACING
        onsets = [min(h, key=lambda t: abs(t - target), default=None) for h in heard]
        found = [t for t in onsets if t is not None and abs(t - target) < SPACING / 2]
        missed += len(DELAYS) - len(found)
        if len(found) == len(DELAYS):
            spreads.append(max(found) - min(found))
        errors += [t - target for t in found]
    return {
        "spread": summary(spreads),
        "error": summary([abs(e) for e in errors]),
        "missed": missed,
        "lookahead_ms": lookahead * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cues", type=int, default=100)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {"together": await run("together", args.cues), "naive relay": await run("immediate", args.cues)}
    print(f"{args.cues} cues at 3 sites, one way 2/15/40 ms + 0-5 ms jitter; milliseconds")
    print(f"{'mode':<13}{'lookahead':>10}{'spread p50':>11}{'p99':>8}{'max':>8}", end="")
    print(f"{'|error| p50':>12}{'p99':>8}{'max':>8}{'missed':>8}")
    for mode, r in results.items():
        s, e = r["spread"], r["error"]
        print(
            f"{mode:<13}{r['lookahead_ms']:10.1f}{s['median']:11.3f}{s['p99']:8.3f}{s['max']:8.3f}"
            f"{e['median']:12.3f}{e['p99']:8.3f}{e['max']:8.3f}{r['missed']:8d}"
        )
    base = results["together"]["spread"]["p99"]
    print(f"naive relay's spread p99 is {results['naive relay']['spread']['p99'] / base:.0f}x Tutti's")
    save(args.json, results)


if __name__ == "__main__":
    asyncio.run(main())
