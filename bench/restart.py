"""A conductor restarted after a long concert: back within 2 s, from the journal's last checkpoint.

    .venv/bin/python bench/restart.py [--hours 2] [--rate 100] [--rounds 3] [--json out.json]

Writes a journal of ``--hours`` of one fader at ``--rate`` values a second (the demo score's
``density``, as an OSC fader's changes), through the journal's own writer, so with its header and
its checkpoints. The journal ends as a conductor killed just before a checkpoint leaves it: with
the most records a restart ever replays after the last checkpoint. A copy without checkpoints is
the baseline, in the same run: what a restart did before checkpoints.

Times, median of ``--rounds``:

- ``resume``: rebuilding the state, in this process, from the journal and from the copy;
- a real ``tutti serve`` on each, from its start until ``/api/status`` answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import medians, save, started  # noqa: E402
from conductor.core import journal  # noqa: E402
from conductor.core.score import load_score  # noqa: E402
from conductor.core.transport import Change, Transport  # noqa: E402

SCORE = load_score(ROOT / "scores" / "demo.yaml")
CHUNK = 10_000  # records appended before waiting for them
BATCH = 1_000  # records the writer takes at once (a live conductor's batches are smaller)


async def generate(path: Path, hours: float, rate: float) -> int:
    """The journal a conductor writes for an OSC fader moving at ``rate`` for ``hours``."""
    header = {"score": str(SCORE.path), "score_sha256": SCORE.sha256, "started": time.time() - hours * 3600}
    writer = journal.Journal(path, header, Transport(SCORE.score))
    writer.max_batch = BATCH  # so checkpoints fall every checkpoint_every records, as in a concert
    await writer.start()
    count = round(hours * 3600 * rate)
    start = header["started"]
    for first in range(1, count + 1, CHUNK):
        written = []
        for seq in range(first, min(count, first + CHUNK - 1) + 1):
            t, value = start + seq / rate, (seq % 100) / 100
            change = Change(
                seq, t + 0.2, {"cmd": "param", "name": "density", "value": value}, params={"density": value}
            )
            written.append(writer.append(journal.Record(change, t, {"role": "osc", "name": "127.0.0.1:9000"})))
        await asyncio.gather(*written)
    await writer.close()
    return count


def killed_before_a_checkpoint(path: Path) -> None:
    """Drop a checkpoint that ends the file: the restart then replays a full interval of records."""
    data = path.read_bytes()
    last = data.rfind(b"\n", 0, len(data) - 1) + 1
    if data.startswith(journal.CHECKPOINT, last):
        with path.open("r+b") as f:
            f.truncate(last)


def without_checkpoints(path: Path, copy: Path) -> None:
    with path.open("rb") as src, copy.open("wb") as dst:
        for line in src:
            if not line.startswith(journal.CHECKPOINT):
                dst.write(line)


def concert_for(journal_path: Path) -> Path:
    """A concert of the demo score on a free port, keeping its journal at ``journal_path``."""
    concert = journal_path.with_suffix(".concert.yaml")
    settings = {"score": str(SCORE.path), "port": 0, "journal": str(journal_path), "tokens": {"conductor": "bench"}}
    concert.write_text(json.dumps(settings))  # JSON is YAML
    return concert


async def serve_until_status(concert: Path, count: int) -> float:
    start = time.perf_counter()
    proc, url = await started(sys.executable, "-m", "conductor", "serve", str(concert), pattern=r"listening on (\S+)")
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/api/status") as r:
            status = await r.json()
        elapsed = time.perf_counter() - start
        assert status["state"]["seq"] == count, status["state"]["seq"]
        return elapsed
    finally:
        proc.terminate()
        await proc.wait()


def timed_resume(path: Path, count: int) -> tuple[float, journal.Resumed]:
    t = time.perf_counter()
    resumed = journal.resume(path, SCORE.score, SCORE.sha256)
    elapsed = time.perf_counter() - t
    assert resumed.transport.seq == count and not resumed.skipped
    return elapsed, resumed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()

    folder = Path("/tmp") / f"tutti-bench-restart-{time.time_ns()}"
    folder.mkdir()
    try:
        path, baseline = folder / "journal.jsonl", folder / "no-checkpoints.jsonl"
        made = time.perf_counter()
        count = await generate(path, args.hours, args.rate)
        killed_before_a_checkpoint(path)
        without_checkpoints(path, baseline)
        mib, plain = path.stat().st_size / 2**20, baseline.stat().st_size / 2**20
        print(
            f"journal: {count} changes ({args.hours:g} h at {args.rate:g}/s), {mib:.0f} MiB "
            f"({plain:.0f} MiB without checkpoints), written in {time.perf_counter() - made:.1f} s"
        )
        concerts = {path: concert_for(path), baseline: concert_for(baseline)}

        timings: dict[str, list[float]] = {
            "resume": [],
            "resume, no checkpoints": [],
            "tutti serve": [],
            "tutti serve, no checkpoints": [],
        }
        for _ in range(args.rounds):
            elapsed, resumed = timed_resume(path, count)
            timings["resume"].append(elapsed)
            elapsed, everything = timed_resume(baseline, count)
            timings["resume, no checkpoints"].append(elapsed)
            assert resumed.transport.snapshot(1e12) == everything.transport.snapshot(1e12)
            timings["tutti serve"].append(await serve_until_status(concerts[path], count))
            timings["tutti serve, no checkpoints"].append(await serve_until_status(concerts[baseline], count))
        print(
            f"resume replays {resumed.records} records after the checkpoint of change {resumed.checkpoint_seq}; "
            f"without checkpoints, {everything.records}"
        )
        figures = medians("restart", "seconds", timings, "resume, no checkpoints")
        save(
            args.json,
            {
                "changes": count,
                "bytes": path.stat().st_size,
                "replayed_after_checkpoint": resumed.records,
                **figures,
            },
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
