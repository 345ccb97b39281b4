"""Continuous control at concert scale: 8 controllers moving faders at 60 Hz while 500 phones watch.

    .venv/bin/python bench/continuous.py [--controllers 8] [--rate 60] [--seconds 30] [--audience 500]
                                         [--nodes 2] [--audience-nice 0] [--conductor-nice 0]
                                         [--json out.json]

(as root: arrivals are seen on the loopback interface, as in ``bench/relay.py``.)

Each controller is a UDP socket sending a TouchOSC-style fader (``/fader/N``) routed to a
parameter of its own, whose ``n_set`` reaches every node agent's scsynth. ``--audience`` clients
(``bench/load.py``, two processes) follow the state. It prints: the conductor's event-loop lag
over the run (p50, p99, max: ``/api/status`` ``loop_lag_ms``) and how much of the run it was
ready to run but waiting for a CPU (all of this bench's processes share the machine's cores; in a
concert the phones are elsewhere: ``--audience-nice 19`` stands for that), values delivered at every scsynth
(read off the loopback interface) against values sent, and what the audience got: state messages
per parameter per second at one audience client (at most one per display frame, 60 a second),
clients joined and let go.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import concert_file, jack_server, node_agent, nodes_up, running, save  # noqa: E402
from bench.relay import BASE_PORT, Sniffer, free_udp_port  # noqa: E402
from conductor.core.osc import osc_message  # noqa: E402

TOKEN = "bench"
JACK = "tutti-continuous"
MAX = 1_000_000


def score(controllers: int) -> str:
    params = "\n".join(f"  - {{id: f{i}, min: 0, max: {MAX}, n_set: {{control: f{i}}}}}" for i in range(controllers))
    return f"title: Continuous bench\nduration: 3600\nparameters:\n{params}\nparts:\n  - {{id: all, name: Everyone}}\n"


async def controller(index: int, osc_port: int, rate: float, seconds: float) -> int:
    """One fader moving for ``seconds``: value N at the Nth frame. Returns how many it sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    start = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        sent += 1
        sock.sendto(osc_message(f"/fader/{index}", [float(sent)]), ("127.0.0.1", osc_port))
        await asyncio.sleep(max(0.0, sent / rate - elapsed))
    sock.close()
    return sent


async def audience(url: str, clients: int, nice: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "nice", "-n", str(nice), sys.executable, str(ROOT / "bench" / "load.py"), url, "--clients", str(clients),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 30,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode()
    if not line.startswith("ready"):
        raise RuntimeError(f"load process: {line!r}")
    return proc


async def results_of(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"done\n")
    await proc.stdin.drain()
    result = json.loads(await proc.stdout.readline())
    await proc.wait()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--controllers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--audience", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument(
        "--audience-nice", type=int, default=0,
        help="niceness of the audience's processes: 19 stands for phones that are elsewhere, as in a concert",
    )  # fmt: skip
    parser.add_argument(
        "--conductor-nice", type=int, default=0, help="the conductor's niceness: -10 as the deployment's units run it"
    )
    parser.add_argument("--json")
    args = parser.parse_args()

    osc_port = free_udp_port()
    routes = [{"address": f"/fader/{i}", "param": f"f{i}", "range": [0, MAX]} for i in range(args.controllers)]
    concert = concert_file(
        {"conductor": TOKEN, "node": TOKEN},
        score(args.controllers),
        lookahead=0.2,
        osc={"udp_port": osc_port, "routes": routes},
    )
    agents: list[asyncio.subprocess.Process] = []
    ports = [BASE_PORT + i for i in range(args.nodes)]
    async with jack_server(JACK), running("serve", str(concert), nice=args.conductor_nice) as url:
        try:
            for i, port in enumerate(ports):
                agents.append(await node_agent(url, TOKEN, f"n{i}", port, JACK))
            await nodes_up(url, args.nodes)
            halves = (args.audience // 2, args.audience - args.audience // 2)
            loads = [await audience(url, n, args.audience_nice) for n in halves]
            sniffer = Sniffer(set(ports), {f"f{i}" for i in range(args.controllers)})
            started = time.time()
            sent = await asyncio.gather(
                *(controller(i, osc_port, args.rate, args.seconds) for i in range(args.controllers))
            )
            expected = sum(sent) * args.nodes
            await sniffer.wait_for(expected)
            lag_seconds = {"lag_seconds": str(time.time() - started)}  # the run's, not the joins'
            async with aiohttp.ClientSession() as http, http.get(f"{url}/api/status", params=lag_seconds) as r:
                status = await r.json()
            crowd = [await results_of(load) for load in loads]
            sniffer.close()
        finally:
            for agent in agents:
                agent.terminate()
            await asyncio.gather(*(a.wait() for a in agents))

    delivered = len({(port, control, value) for _, port, control, value in sniffer.by_control})
    updates = crowd[0]["updates"]
    seconds = max(t for t, _ in updates) - started if updates else args.seconds
    per_param = {f"f{i}": sum(f"f{i}" in params for _, params in updates) / seconds for i in range(args.controllers)}
    rejections = status["rejections"]
    figures = {
        "loop_lag_ms": status["loop_lag_ms"],
        "values_sent": sum(sent),
        "deliveries_expected": expected,
        "deliveries": delivered,
        "audience_joined": sum(c["joined"] for c in crowd),
        "audience_let_go": rejections.get("slow", 0) + rejections.get("overloaded", 0),
        "state_messages_per_param_per_s_max": max(per_param.values(), default=0.0),
        "coalesced_by_conductor": status.get("osc_coalesced", 0),
    }
    lag = figures["loop_lag_ms"]
    print(f"{args.controllers} controllers x {args.rate:g} Hz for {args.seconds:g} s", end=", ")
    print(f"{args.audience} audience (nice {args.audience_nice}), {args.nodes} nodes", end=", ")
    print(f"conductor at nice {args.conductor_nice}")
    print(f"event-loop lag ms: p50 {lag['p50']:.2f}  p99 {lag['p99']:.2f}  max {lag['max']:.2f}", end="")
    if "cpu_wait_share" in lag:
        print(f"; the loop was ready and waiting for a CPU {lag['cpu_wait_share'] * 100:.0f}% of the run", end="")
    print()
    print(f"values at the nodes: {delivered} of {expected} ({expected - delivered} missing)")
    most = figures["state_messages_per_param_per_s_max"]
    print(f"audience: {figures['audience_joined']} joined, {figures['audience_let_go']} let go", end="; ")
    print(f"at most {most:.1f} state messages per parameter per second")
    save(args.json, figures)


if __name__ == "__main__":
    asyncio.run(main())
