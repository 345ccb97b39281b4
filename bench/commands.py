"""Commands a conductor-role client has accepted back to back, each acknowledged once it is on disk.

    .venv/bin/python bench/commands.py [--commands 3000] [--window 64] [--rounds 3] [--json out.json]

A conductor-role client (the stock socket.io-client from npm, ``bench/node/commands.mjs``: Python's
client would be the bottleneck) sends parameter changes as fast as the conductor acknowledges
them, with up to ``--window`` in flight. Each acknowledgement means the change is in the journal on disk.
Two conductors are measured in the same run: Tutti's, whose journal writes every change waiting
in one batch with one ``fdatasync``, and the same conductor with batches of one change (one
``fdatasync`` per change, the path before group commit). Prints the median of the rounds.

    .venv/bin/python bench/commands.py --cost [--commands 20000] [--rounds 5]

prints what a command costs the conductor itself, without Socket.IO: a real conductor in this
process is handed each command as its gateway hands it on, ``--window`` in flight, each
acknowledged once on disk; the process's CPU time per command, median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import concert_file, cpu_seconds, medians, save, started  # noqa: E402
from conductor.tools.cli import run  # noqa: E402

TOKEN = "bench"


async def serve(concert: str, max_batch: int) -> None:
    """The child process: a conductor whose journal writes at most ``max_batch`` changes at once."""
    from conductor.core.concert import load_concert
    from conductor.server.conductor import local

    conductor, gateway = local(load_concert(concert))
    conductor.journal.max_batch = max_batch or None
    await conductor.start("127.0.0.1")
    _runner, port = await gateway.start(["127.0.0.1"], 0)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    import signal as _s

    asyncio.get_running_loop().add_signal_handler(_s.SIGINT, stop.set)
    await stop.wait()


async def rate(url: str, commands: int, window: int) -> float:
    """Acknowledged commands per second, ``window`` in flight."""
    client = await asyncio.create_subprocess_exec(
        "node", str(ROOT / "bench" / "node" / "commands.mjs"), url, TOKEN, str(commands), str(window),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await client.communicate()
    result = json.loads(out)
    if result["refused"]:
        raise RuntimeError(f"{result['refused']} commands refused")
    return commands / result["seconds"]


async def cost(commands: int, window: int, rounds: int) -> None:
    from conductor.core.concert import load_concert
    from conductor.server.conductor import local
    from conductor.server.joins import Client

    conductor, _gateway = local(load_concert(concert_file({"conductor": TOKEN}, lookahead=0.05)))
    await conductor.start("127.0.0.1")
    conductor.clients["bench"] = Client(sid="bench", role="conductor", name="bench", joined=0.0, last_seen=0.0)
    per_command = []
    try:
        for _ in range(rounds + 1):  # the first warms up
            start, pending, answers = time.process_time(), set(), []
            for i in range(commands):
                payload = {"cmd": "param", "name": "density", "value": (i % 100) / 100}
                pending.add(asyncio.ensure_future(conductor.handle("bench", "command", [payload])))
                if len(pending) >= window:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    answers += [d.result() for d in done]
            answers += await asyncio.gather(*pending)
            per_command.append((time.process_time() - start) / commands * 1e6)
            if refused := [a for a in answers if not a["ok"]]:
                raise RuntimeError(f"{len(refused)} commands refused: {refused[0]}")
    finally:
        await conductor.stop()
    rounds_us = ", ".join(f"{us:.1f}" for us in per_command[1:])
    print(f"a command costs the conductor {statistics.median(per_command[1:]):.1f} us of CPU (rounds: {rounds_us})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=0, help="commands per round (3000; 20000 with --cost)")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=0, help="rounds (3; 5 with --cost)")
    parser.add_argument("--cost", action="store_true", help="what a command costs the conductor, in one process")
    parser.add_argument("--json")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost:
        await cost(args.commands or 20000, args.window, args.rounds or 5)
        return
    args.commands, args.rounds = args.commands or 3000, args.rounds or 3
    if args.serve:
        await serve(args.serve, args.max_batch)
        return

    results: dict[str, list[float]] = {"group commit": [], "one fdatasync per change": []}
    cpu: dict[str, list[float]] = {name: [] for name in results}  # the conductor's CPU per command
    for _ in range(args.rounds):
        for name, max_batch in (("group commit", 0), ("one fdatasync per change", 1)):
            concert = concert_file({"conductor": TOKEN}, lookahead=0.05)
            command = (sys.executable, str(Path(__file__)), "--serve", str(concert), "--max-batch", str(max_batch))
            proc, url = await started(*command, pattern=r"listening on (\S+)")
            try:
                before = cpu_seconds(proc.pid)
                results[name].append(await rate(url, args.commands, args.window))
                cpu[name].append((cpu_seconds(proc.pid) - before) / args.commands * 1e6)
            finally:
                proc.terminate()
                await proc.wait()
    print(f"{args.commands} commands, {args.window} in flight, median of {args.rounds} rounds")
    figures = medians("journal", "commands/s", results, "one fdatasync per change", digits=0)
    print()
    figures["cpu"] = medians("conductor CPU", "us/command", cpu, "one fdatasync per change", digits=0)
    save(args.json, figures)


if __name__ == "__main__":
    run(main())  # on the loop that ``tutti serve`` runs on
