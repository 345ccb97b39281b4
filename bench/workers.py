"""Clients served by one process and by 1, 2 and 4 web workers on Redis, at a fixed broadcast load.

    .venv/bin/python bench/workers.py [--clients 200 600] [--rate 10] [--seconds 10] [--json out.json]

A real redis-server on loopback. For each number of clients and each way of serving them, the
conductor is started afresh, load processes (``bench/load.py``) join the clients as audience,
and a conductor-role client sends ``rate`` parameter changes a second. Each change's delivery
latency is the time from the command's send to its receipt by a client (same machine, same wall
clock): through a worker it includes the command's trip to the performance over Redis. The
baseline, in the same run, is ``tutti serve`` in one process.
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

from bench.harness import concert_file, percentile, redis_server, running, save  # noqa: E402
from conductor.client import TuttiClient  # noqa: E402

SCORE = """\
title: Workers bench
duration: 3600
parameters:
  - {id: seq, min: 0, max: 10000000}
parts:
  - {id: all, name: Everyone}
"""
TOKEN = "bench"
LOAD_PROCESSES = 2


async def load(url: str, clients: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "load.py"), url, "--clients", str(clients),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode()
    if not line.startswith("ready"):
        raise RuntimeError(f"the load process did not start: {line!r}")
    return proc


async def one_run(redis: str, workers: int, clients: int, rate: float, seconds: float) -> dict[str, float]:
    concert = concert_file({"conductor": TOKEN}, SCORE, host="127.0.0.1")
    extra = ["--workers", str(workers), "--redis", redis] if workers else []
    async with running("serve", str(concert), *extra) as url:
        loads = [await load(url, clients // LOAD_PROCESSES) for _ in range(LOAD_PROCESSES)]
        boss = TuttiClient(url, "conductor", TOKEN, resync=60)
        await boss.connect()
        sent: dict[int, float] = {}
        for i in range(int(rate * seconds)):
            before = time.time()
            answer = await boss.command("param", name="seq", value=i)
            sent[answer["seq"]] = before
            await asyncio.sleep(max(0.0, before + 1 / rate - time.time()))
        await asyncio.sleep(1.0)
        await boss.close()
        results = []
        for proc in loads:
            out, _ = await proc.communicate(b"\n")
            results.append(json.loads(out))
    joined = sum(r["joined"] for r in results)
    latencies = [(t - sent[seq]) * 1000 for r in results for seq, t in r["received"] if seq in sent]
    return {
        "joined": joined,
        "failed": sum(r["failed"] for r in results),
        "delivered": len(latencies) / (joined * len(sent)) if joined else 0.0,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[200, 600])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rate", type=float, default=10.0, help="changes a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; {args.rate:g} changes/s for {args.seconds:g} s; latency from command to receipt")
    print(f"{'clients':>8}{'served by':>14}{'joined':>8}{'delivered':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'p99 vs one':>12}")  # fmt: skip
    figures: dict[str, dict[str, float]] = {}
    async with redis_server() as redis:
        for clients in args.clients:
            base = 0.0
            for workers in [0, *args.workers]:
                row = await one_run(redis, workers, clients, args.rate, args.seconds)
                base = base or row["p99_ms"]
                label = f"{workers} workers" if workers else "one process"
                figures[f"{clients}/{label}"] = row
                cells = f"{row['joined']:>8}{row['delivered']:>10.1%}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                print(f"{clients:>8}{label:>14}{cells}{row['max_ms']:>9.2f}{row['p99_ms'] / base:>11.2f}x", flush=True)
    save(args.json, figures)


if __name__ == "__main__":
    asyncio.run(main())
