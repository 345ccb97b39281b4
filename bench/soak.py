"""A soak run: a conductor serving a crowd for minutes, its memory and broadcast latency over time.

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 500] [--performers 20] [--json out.json]

``tutti serve`` plays the demo while one Node load process (``bench/node/load.mjs``) holds
``--clients`` audience connections and times changes sent back to back (each from its send to
its receipt by the last client), and ``--performers`` Python clients keep their clocks in step as
performers' pages do. Every 10 s the conductor's resident memory is sampled. Printed: per tenth
of the run, memory at its end and the latency's p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import NODE, TOKEN, rss_kib  # noqa: E402
from bench.harness import concert_file, percentile, save, started  # noqa: E402
from conductor.client import TuttiClient  # noqa: E402

SAMPLE_EVERY = 10.0  # seconds
ROUND_SECONDS = 0.12  # a change and its fan-out, and the load process's pause between them


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--performers", type=int, default=20)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    tokens = {"conductor": TOKEN, "performer": "p"}
    concert = concert_file(tokens, host="127.0.0.1", lookahead=0.05, overload_lag=10)
    command = [sys.executable, "-m", "conductor", "serve", str(concert), "--play"]
    server, url = await started(*command, pattern=r"listening on (\S+)")
    performers = [TuttiClient(url, "performer", "p", part="drones", name=f"p{i}") for i in range(args.performers)]
    for performer in performers:
        await performer.connect()
    memory = [(0.0, rss_kib(server.pid))]
    rounds = int(args.minutes * 60 / ROUND_SECONDS)
    load = await asyncio.create_subprocess_exec(
        "node", str(NODE / "load.mjs"), url, str(args.clients), str(rounds), "tutti", TOKEN, "0",
        stdout=asyncio.subprocess.PIPE, limit=2**26,
    )  # fmt: skip
    assert load.stdout is not None
    assert (await load.stdout.readline()).decode().strip() == "ready"
    began = time.monotonic()
    result = asyncio.create_task(load.stdout.readline())
    while not result.done():
        await asyncio.wait([result], timeout=SAMPLE_EVERY)
        memory.append((time.monotonic() - began, rss_kib(server.pid)))
    rounds_ms = json.loads(result.result())["rounds"]
    elapsed = time.monotonic() - began
    errors = [p.clock.error for p in performers]
    for performer in performers:
        await performer.close()
    server.terminate()
    await server.wait()

    print(f"{os.cpu_count()} cores; {args.clients} audience clients, {args.performers} performers, {elapsed:.0f} s")
    print(f"{'part':>6}{'until s':>9}{'RSS MiB':>9}{'changes':>9}{'p50 ms':>9}{'p99 ms':>9}{'lost':>6}")
    figures = []
    for tenth in range(10):
        chunk = rounds_ms[tenth * len(rounds_ms) // 10 : (tenth + 1) * len(rounds_ms) // 10]
        until = elapsed * (tenth + 1) / 10
        rss = next(kib for t, kib in reversed(memory) if t <= until + SAMPLE_EVERY) / 1024
        done = [t for t in chunk if t is not None]
        row = {"until_s": until, "rss_mib": rss, "changes": len(chunk), "lost": len(chunk) - len(done),
               "p50_ms": statistics.median(done), "p99_ms": percentile(done, 0.99)}  # fmt: skip
        figures.append(row)
        print(f"{tenth + 1:>4}/10{until:>9.0f}{rss:>9.1f}{len(chunk):>9}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
              f"{row['lost']:>6}")  # fmt: skip
    print(f"memory: {memory[0][1] / 1024:.1f} MiB before the audience joined, {memory[1][1] / 1024:.1f} MiB "
          f"with it, {memory[-1][1] / 1024:.1f} MiB at the end; performers' clock error p99 "
          f"{percentile(errors, 0.99) * 1000:.2f} ms")  # fmt: skip
    save(args.json, {"rounds": figures, "memory_kib": memory})


if __name__ == "__main__":
    asyncio.run(main())
