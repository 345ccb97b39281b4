"""A conductor restarted after a long concert: back within 2 s, from the journal's last checkpoint.

    .venv/bin/python bench/restart.py [--hours 2] [--rate 100] [--rounds 3] [--json out.json]

Writes a journal of ``--hours`` of one fader at ``--rate`` values a second (the demo score's
``density``), through the journal's own writer (so with its checkpoints), then times, median of
``--rounds``:

- ``resume``: rebuilding the state from the last checkpoint, in this process;
- the baseline, in the same run: reading and replaying every record (what a restart did before
  checkpoints);
- a real ``tutti serve`` on that journal, from its start until ``/api/status`` answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import concert_file, medians, save, started  # noqa: E402
from conductor.core import journal  # noqa: E402
from conductor.core.score import load_score  # noqa: E402
from conductor.core.transport import Change, Transport  # noqa: E402

SCORE = load_score(ROOT / "scores" / "demo.yaml")
CHUNK = 10_000


async def generate(path: Path, hours: float, rate: float) -> int:
    header = {"score": str(SCORE.path), "score_sha256": SCORE.sha256, "started": time.time()}
    writer = journal.Journal(path, header, Transport(SCORE.score))
    await writer.start()
    count = round(hours * 3600 * rate)
    start = time.time() - hours * 3600
    for first in range(1, count + 1, CHUNK):
        records = []
        for seq in range(first, min(count, first + CHUNK - 1) + 1):
            t = start + seq / rate
            change = Change(seq, t + 0.2, {"cmd": "param", "name": "density", "value": (seq % 100) / 100},
                            params={"density": (seq % 100) / 100})  # fmt: skip
            records.append(writer.append(journal.Record(change, t, {"role": "osc", "name": "127.0.0.1:9000"})))
        await asyncio.gather(*records)
    await writer.close()
    return count


def size(path: Path) -> int:
    return path.stat().st_size


def replay_everything(path: Path) -> Transport:
    transport = Transport(SCORE.score)
    for record in journal.read(path).records:
        transport.apply(record.change)
    return transport


async def serve_until_status(concert: Path) -> float:
    start = time.perf_counter()
    proc, url = await started(sys.executable, "-m", "conductor", "serve", str(concert), pattern=r"listening on (\S+)")
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/api/status") as r:
            status = await r.json()
        elapsed = time.perf_counter() - start
        assert status["state"]["seq"] > 0
        return elapsed
    finally:
        proc.terminate()
        await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()

    concert = concert_file({"conductor": "bench"})
    path = Path(json.loads(concert.read_text())["journal"])
    made = time.perf_counter()
    count = await generate(path, args.hours, args.rate)
    print(f"journal: {count} changes ({args.hours:g} h at {args.rate:g}/s), {size(path) / 2**20:.0f} MiB, "
          f"written in {time.perf_counter() - made:.1f} s")  # fmt: skip

    timings: dict[str, list[float]] = {"resume from checkpoint": [], "replay everything": [], "tutti serve": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        resumed = journal.resume(path, SCORE.score, SCORE.sha256)
        timings["resume from checkpoint"].append(time.perf_counter() - t)
        t = time.perf_counter()
        everything = replay_everything(path)
        timings["replay everything"].append(time.perf_counter() - t)
        assert resumed.transport.seq == everything.seq == count
        timings["tutti serve"].append(await serve_until_status(concert))
    figures = medians("restart", "seconds", timings, "replay everything")
    save(args.json, {"changes": count, "bytes": size(path), **figures})


if __name__ == "__main__":
    asyncio.run(main())
