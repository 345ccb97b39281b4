"""JackTrip links: measured round trip for several queue lengths, and recovery after a kill.

    .venv/bin/python bench/links.py [--queues 2,4,8] [--kills 3] [--asymmetric 3,20] [--jacktrip PATH] [--json out.json]

For each queue length: three JACK servers (dummy driver, 128-frame periods, 48 kHz), a hub at
ucas and a client at pku, each run by its own ``tutti node`` from one concert file. The pku node
measures the audio round trip on its measuring channel (an impulse out through the link, looped
back at the hub, timed in JACK frames) every second, and each end the way in from the other (an impulse
sent at a known conductor time, timed where it arrives); printed: the first and the last round trip
over 20 s, beside twice the queue in periods; then each way beside the round trip, and the mean
error an aligned cue would have from each rule: with one-way delays, how far the next measurement
of the same way moved (the link's own jitter); with half the round trip, how far that is from each
way. ``tests/test_oneway.py`` records real cues through an asymmetric emulated link. Last, with
queue 4, the asymmetric case (as root): the hub's and pku's machines in network namespaces of their
own, joined through the user-space WAN (``conductor/tools/wan.py``) with ``--asymmetric`` ms from
pku to the hub and back; the conductor in a third, at no distance from either, so the clocks are
right and only the way between the campuses differs.

Then, with queue 4, pku's jacktrip is killed ``--kills`` times; each time, the seconds until the
node reports the link connected again, and until an impulse has been through it again (the node
measures on every reconnection). The node reports a link's state when it changes, and is polled
every 0.1 s.
``--jacktrip`` runs another jacktrip at both ends, e.g. 2.x from ``deploy/jacktrip2.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import concert_file, jack_server, node_agent, nodes_up, running, save, started  # noqa: E402
from conductor.node.jacktrip import jacktrip_version  # noqa: E402
from conductor.tools import netns  # noqa: E402
from conductor.tools.wan import Lag, Router  # noqa: E402

TOKEN = "bench"
PERIOD_MS = 128 / 48000 * 1000
SCORE = "title: Links\nduration: 600\nparts:\n  - {id: a, name: A, site: ucas}\n  - {id: c, name: C, site: pku}\n"


async def link_of(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/status") as r:
        clients = (await r.json())["clients"]
    node = next((c for c in clients if c["name"] == name), None)
    links = ((node or {}).get("health") or {}).get("links") or [{}]
    return links[0]


HOSTS = {"conductor": "2001:db8:10::1", "ucas": "2001:db8:10::2", "pku": "2001:db8:30::2"}


async def case(
    queue: int, kills: int, base: int, strategy: int, jacktrip: str, asymmetric: tuple[float, float] | None = None
) -> dict[str, Any]:
    ends = {"queue": queue, "buffer_strategy": strategy}
    hub_address = HOSTS["ucas"] if asymmetric else "127.0.0.1"
    audio = {
        "hub": {"site": "ucas", "address": hub_address, "port": base, **ends},
        "links": [{"site": "pku", "bind_port": base + 1, **ends}],
    }
    where = {"host": HOSTS["conductor"]} if asymmetric else {}
    concert = concert_file({"conductor": TOKEN, "node": TOKEN}, SCORE, audio=audio, **where)
    jack = {site: f"tutti-links-{site}-{os.getpid()}" for site in ("ucas", "pku")}
    out: dict[str, Any] = {"queue": queue, "asymmetric": asymmetric, "round_trips_ms": [], "ways": [], "recoveries": []}
    async with contextlib.AsyncExitStack() as stack:
        hosts: dict[str, netns.Host] = {}
        if asymmetric:
            # Each campus in a namespace of its own, the conductor in a third, at no distance from
            # either: the clocks are right, and only the way between the campuses differs.
            up, down = asymmetric
            router = Router({("pku", "ucas"): Lag(up / 1000), ("ucas", "pku"): Lag(down / 1000)})
            made = netns.wan(f"t20b-{os.getpid()}-links", {k: [v] for k, v in HOSTS.items()}, router)
            hosts = await stack.enter_async_context(made)
            command = (
                *netns.exec_in(hosts["conductor"].netns, sys.executable),
                "-m",
                "conductor",
                "serve",
                str(concert),
            )
            proc, url = await started(*command, pattern=r"listening on (\S+)")
            stack.push_async_callback(_ended, proc)
            forward = netns.Forward(hosts["conductor"].netns, HOSTS["conductor"], int(url.rsplit(":", 1)[1]))
            await forward.start()
            stack.push_async_callback(forward.close)
            here = f"http://127.0.0.1:{forward.port}"
        else:
            url = here = await stack.enter_async_context(running("serve", str(concert)))
        agents = []
        for i, site in enumerate(("ucas", "pku")):
            await stack.enter_async_context(jack_server(jack[site]))
            extra = ("--site", site, "--jacktrip", jacktrip)
            within = hosts[site].netns if hosts else None
            agents.append(await node_agent(url, TOKEN, f"n{site}", 57500 + i, jack[site], *extra, netns=within))
            await nodes_up(here, i + 1)
        url = here
        try:
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 20
                seen = 0
                while time.monotonic() < deadline:
                    pku = await link_of(http, url, "npku")
                    out["round_trips_ms"] = pku.get("history_ms", [])
                    hub = await link_of(http, url, "nucas")
                    up, down = (hub.get("way_in_ms") or {}).get("pku"), (pku.get("way_in_ms") or {}).get("ucas")
                    if pku.get("ways_measured", 0) > seen and None not in (up, down, pku.get("latency_ms")):
                        seen = pku["ways_measured"]  # each time pku has measured the way in again
                        out["ways"].append({"up": up, "down": down, "rtt": pku["latency_ms"]})
                    await asyncio.sleep(0.5)
                for _ in range(kills):
                    pgrep = await asyncio.create_subprocess_exec("pgrep", "-f", f" -C 127.0.0.1 -P {base} ", stdout=-1)
                    pid = int((await pgrep.communicate())[0].split()[0])
                    before = await link_of(http, url, "npku")
                    os.kill(pid, signal.SIGKILL)
                    killed = time.monotonic()
                    connected = measured = None
                    states: list[str] = []
                    while time.monotonic() - killed < 30 and measured is None:
                        report = await link_of(http, url, "npku")
                        if not states or states[-1] != report.get("state"):
                            states.append(report.get("state", "?"))
                        restarted = report.get("restarts", 0) > before.get("restarts", 0)
                        if connected is None and restarted and report.get("state") == "connected":
                            connected = time.monotonic() - killed
                        if restarted and report.get("measured", 0) > before.get("measured", 0):
                            measured = time.monotonic() - killed
                        await asyncio.sleep(0.1)
                    out["recoveries"].append({"connected_s": connected, "measured_s": measured, "states": states})
                    await asyncio.sleep(12)  # a healthy spell, so the next restart starts without backoff
        finally:
            for agent in agents:
                agent.terminate()
                await agent.wait()
    return out


def label(result: dict[str, Any]) -> str:
    """A case's queue, and its emulated ways (ms up/down) if it has them: ``4 3/20``."""
    asymmetric = result.get("asymmetric")
    return f"{result['queue']}" + (f" {asymmetric[0]:g}/{asymmetric[1]:g}" if asymmetric else "")


async def _ended(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", default="2,4,8")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--strategy", type=int, default=1, help="jacktrip --bufstrategy")
    parser.add_argument("--jacktrip", default="jacktrip", help="the jacktrip program at both ends")
    parser.add_argument(
        "--asymmetric", default="3,20",
        help="then queue 4 with pku and the hub in network namespaces this many ms apart: UP,DOWN ('' for none)",
    )  # fmt: skip
    parser.add_argument("--json")
    args = parser.parse_args()
    queues = [int(q) for q in args.queues.split(",")]
    results = []
    for i, queue in enumerate(queues):
        results.append(await case(queue, args.kills if queue == 4 else 0, 21000 + 10 * i, args.strategy, args.jacktrip))
    if args.asymmetric:
        up, down = (float(x) for x in args.asymmetric.split(","))
        results.append(await case(4, 0, 21000 + 10 * len(queues), args.strategy, args.jacktrip, (up, down)))
    version = ".".join(map(str, await jacktrip_version(args.jacktrip)))
    print(f"jacktrip {version}; period {PERIOD_MS:.3f} ms (128 frames at 48 kHz)")
    print(f"{'queue':>9}{'2q periods ms':>15}{'first ms':>10}{'periods':>9}{'last ms':>9}{'periods':>9}  all")
    for r in results:
        trips, q = r["round_trips_ms"], r["queue"]
        if trips:
            first, last = trips[0], trips[-1]
            print(
                f"{label(r):>9}{2 * q * PERIOD_MS:15.3f}{first:10.3f}{first / PERIOD_MS:9.2f}"
                f"{last:9.3f}{last / PERIOD_MS:9.2f}  {trips}"
            )
        else:
            print(f"{label(r):>9}  none measured")
    print()
    print("each way (ms; up = pku to the hub, down = back), beside the round trip; the error an aligned cue")
    print("would have from each rule: one way, its next measurement's change; half the round trip, its")
    print("distance from the way it stands for (less the far end's loop back, a period)")
    print(f"{'queue':>9}{'up':>9}{'down':>9}{'rtt':>9}{'up+down+1':>11}{'err one-way':>13}{'err half':>10}{'ratio':>7}")
    for r in results:
        ways = r["ways"]
        if not ways:
            print(f"{label(r):>9}  none measured")
            continue
        last = ways[-1]
        one = [abs(b[k] - a[k]) for a, b in itertools.pairwise(ways) for k in ("up", "down")]
        half = [abs((w["rtt"] - PERIOD_MS) / 2 - w[k]) for w in ways for k in ("up", "down")]
        err_one, err_half = (sum(one) / len(one) if one else 0.0), sum(half) / len(half)
        ratio = f"{err_half / err_one:7.1f}" if err_one > 0 else "      ∞"
        print(
            f"{label(r):>9}{last['up']:9.3f}{last['down']:9.3f}{last['rtt']:9.3f}"
            f"{last['up'] + last['down'] + PERIOD_MS:11.3f}{err_one:13.3f}{err_half:10.3f}{ratio}"
        )
    for r in results:
        for k in r["recoveries"]:
            back = [f"{k[key]:.2f} s" if k[key] is not None else "never" for key in ("connected_s", "measured_s")]
            print(f"kill: connected again after {back[0]}, audio through after {back[1]} ({' → '.join(k['states'])})")
    save(args.json, results)


if __name__ == "__main__":
    asyncio.run(main())
