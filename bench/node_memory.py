"""A node agent's memory over 100,000 changes of a parameter it sounds: it must stay flat.

    .venv/bin/python bench/node_memory.py [--changes 100000] [--rate 2000] [--json out.json]

A controller moves a fader (OSC, routed to a parameter with ``n_set``) ``--changes`` times at
``--rate`` values a second; one node agent with its scsynth plays every value. The agent's
resident memory is printed every tenth of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import jack_server, node_agent, nodes_up, running, save  # noqa: E402
from bench.relay import BASE_PORT, TOKEN, free_udp_port, relay_concert  # noqa: E402
from conductor.core.osc import osc_message  # noqa: E402


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024  # type: ignore[index]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--json")
    args = parser.parse_args()

    osc_port = free_udp_port()
    concert = relay_concert(osc_port)
    controller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rows = []
    async with jack_server("tutti-memory"), running("serve", str(concert)) as url:
        agent = await node_agent(url, TOKEN, "n0", BASE_PORT, "tutti-memory")
        try:
            await nodes_up(url, 1)
            print(f"{'changes':>9}{'node RSS MiB':>14}")
            start = time.perf_counter()
            for n in range(args.changes + 1):
                if n % (args.changes // 10) == 0:
                    rows.append({"changes": n, "rss_mib": rss_mib(agent.pid)})
                    print(f"{n:9d}{rows[-1]['rss_mib']:14.1f}", flush=True)
                if n < args.changes:
                    controller.sendto(osc_message("/seq", [float(n)]), ("127.0.0.1", osc_port))
                    if n % 100 == 0:
                        await asyncio.sleep(max(0.0, start + n / args.rate - time.perf_counter()))
        finally:
            agent.terminate()
            await agent.wait()
    growth = rows[-1]["rss_mib"] - rows[1]["rss_mib"]
    print(f"growth from {rows[1]['changes']} to {rows[-1]['changes']} changes: {growth:+.1f} MiB")
    save(args.json, {"rows": rows, "growth_mib": growth})


if __name__ == "__main__":
    asyncio.run(main())
