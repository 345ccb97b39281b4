"""Broadcast fan-out and memory per client: Tutti's conductor against a minimal Node Socket.IO 4 server.

    .venv/bin/python bench/fanout.py [--clients 100 500 1000 2000] [--rounds 20] [--json out.json]

For each number of clients, one Node load process (``bench/node/load.mjs``, socket.io-client 4)
joins them, then times each change from its send to its receipt by the last client:

- Tutti: the clients join ``tutti serve`` as audience; a conductor-role socket sends tempo
  changes, and the conductor journals each one and broadcasts the new state to everyone;
- Tutti with web workers (``--workers K``, on a real redis-server): the same, served by K worker
  processes;
- Node: the same clients join ``bench/node/server.mjs`` (socket.io 4 from npm), which broadcasts
  what a socket sends it: a payload as large as Tutti's state message.

Memory per client is each server's resident memory with the clients joined, less before, per
client (for workers: the workers' together).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import concert_file, percentile, redis_server, save, started  # noqa: E402

NODE = ROOT / "bench" / "node"
TOKEN = "bench"


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (web workers)."""
    total = 0
    for p in [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]:
        status = Path(f"/proc/{p}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])  # type: ignore[index]
    return total


async def measure(
    server: asyncio.subprocess.Process, url: str, clients: int, rounds: int, mode: str, size: int
) -> dict:
    before = rss_kib(server.pid)
    load = await asyncio.create_subprocess_exec(
        "node", str(NODE / "load.mjs"), url, str(clients), str(rounds), mode, TOKEN, str(size),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert load.stdout is not None
    assert (await load.stdout.readline()).decode().strip() == "ready"
    joined = rss_kib(server.pid)
    result = json.loads(await load.stdout.readline())
    await load.wait()
    server.terminate()
    await server.wait()
    times = [t for t in result["rounds"] if t is not None]
    return {
        "joined": result["joined"],
        "lost_rounds": len(result["rounds"]) - len(times),
        "p50_ms": statistics.median(times),
        "p99_ms": percentile(times, 0.99),
        "kib_per_client": (joined - before) / clients,
        "bytes": result["bytes"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 500, 1000, 2000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="also Tutti with this many web workers (0: not)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; {args.rounds} changes per case; ms from the change to the last client")
    cases = ["tutti", *([f"{args.workers} workers"] if args.workers else []), "node"]
    print(f"{'clients':>8}" + "".join(f"{c + ' p50':>17}{'p99':>8}{'vs node':>9}{'KiB/client':>12}" for c in cases))
    figures: dict[int, dict[str, dict[str, float]]] = {}
    async with redis_server() as redis:
        for clients in args.clients:
            row = figures[clients] = {}
            for case in cases[:-1]:
                # Fan-out as such: the conductor keeps its whole audience however late it runs.
                concert = concert_file({"conductor": TOKEN}, host="127.0.0.1", lookahead=0.05, overload_lag=10)
                extra = ["--workers", str(args.workers), "--redis", redis] if case != "tutti" else []
                command = [sys.executable, "-m", "conductor", "serve", str(concert), *extra]
                server, url = await started(*command, pattern=r"listening on (\S+)")
                row[case] = await measure(server, url, clients, args.rounds, "tutti", 0)
            server, port = await started("node", str(NODE / "server.mjs"), "0", pattern=r"listening (\d+)")
            size = int(row["tutti"]["bytes"])
            row["node"] = await measure(server, f"http://127.0.0.1:{port}", clients, args.rounds, "plain", size)
            cells = []
            for case in cases:
                r = row[case]
                ratio = r["p50_ms"] / row["node"]["p50_ms"]
                cells.append(f"{r['p50_ms']:>17.1f}{r['p99_ms']:>8.1f}{ratio:>8.2f}x{r['kib_per_client']:>12.1f}")
            print(f"{clients:>8}" + "".join(cells), flush=True)
    save(args.json, figures)


if __name__ == "__main__":
    asyncio.run(main())
