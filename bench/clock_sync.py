"""Clock-sync error of N Python sync clients against a running conductor, with and without jitter.

    .venv/bin/python bench/clock_sync.py [--clients 10] [--seconds 20] [--json out.json]

Every client follows Tutti's schedule (bursts of 8 exchanges every 3 s; here every 1 s to gather
more in a short run) and records its exchanges. At the end each client's estimate is compared
with the true offset, which is known exactly because the conductor and the clients share one
system clock. The same exchanges are also fed to two common rules, as baselines in the same run:
the exchange with the minimum round trip, and the `timesync` npm library's rule (Drawsocket):
the latest 5 exchanges, drop round trips above median + sd, mean of the rest.
Figures are printed as median and p99 of |error| over the clients, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import concert_file, report, running  # noqa: E402
from conductor.client import TuttiClient  # noqa: E402
from conductor.core.clock import Exchange  # noqa: E402


def min_rtt_rule(exchanges: list[Exchange]) -> float:
    best = min(exchanges, key=lambda e: e.rtt)
    return (best.up - best.down) / 2


def timesync_rule(exchanges: list[Exchange]) -> float:
    last = exchanges[-5:]
    rtts = [e.rtt for e in last]
    limit = statistics.median(rtts) + (statistics.pstdev(rtts) if len(rtts) > 1 else 0)
    kept = [e for e in last if e.rtt <= limit] or last
    return statistics.mean((e.up - e.down) / 2 for e in kept)


async def run_case(url: str, status_url: str, token: str, clients: int, seconds: float) -> dict[str, list[float]]:
    recorded: list[list[Exchange]] = [[] for _ in range(clients)]
    syncers = []
    for i in range(clients):
        c = TuttiClient(url, "node", token, name=f"bench-{i}", resync=1.0)
        add = c.clock.add

        def recording(t0: float, t1: float, t2: float, t3: float, _add=add, _log=recorded[i]) -> bool:
            ok = _add(t0, t1, t2, t3)
            if ok:
                _log.append(Exchange(t0, t1, t2, t3))
            return ok

        c.clock.add = recording  # type: ignore[method-assign]
        syncers.append(c)
    await asyncio.gather(*(c.connect() for c in syncers))
    await asyncio.sleep(seconds)
    async with aiohttp.ClientSession() as session, session.get(status_url) as r:
        truth = (await r.json())["clock_minus_wall"]
    out: dict[str, list[float]] = {"tutti": [], "min_rtt": [], "timesync": []}
    for c, exchanges in zip(syncers, recorded, strict=True):
        assert c.clock.estimate is not None
        out["tutti"].append(abs(c.clock.estimate - truth) * 1000)
        out["min_rtt"].append(abs(min_rtt_rule(exchanges) - truth) * 1000)
        out["timesync"].append(abs(timesync_rule(exchanges) - truth) * 1000)
    await asyncio.gather(*(c.close() for c in syncers))
    return out


async def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    results = {}
    async with running("serve", str(concert_file({"conductor": "b", "node": "n"}))) as url:
        results["loopback"] = await run_case(url, url + "/api/status", "n", args.clients, args.seconds)
        host_port = url.removeprefix("http://")
        async with running("emulate", "--to", host_port, "--jitter", "0.020", "--seed", "1") as link_addr:
            link_url = "http://127.0.0.1:" + link_addr.rsplit(":", 1)[1]
            results["jitter 0-20 ms"] = await run_case(link_url, url + "/api/status", "n", args.clients, args.seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    report(
        f"clock-sync error, {args.clients} clients, {args.seconds:g} s each case (|error| in ms)",
        "case",
        results,
        args.json,
    )


if __name__ == "__main__":
    main()
