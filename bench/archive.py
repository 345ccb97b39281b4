"""The concert archive: how well each archived track lines up with the journal, and what recording costs.

    .venv/bin/python bench/archive.py [--seconds 30] [--json out.json]

Two node agents, each with its scsynth on one JACK server (dummy driver, 128 frames), play a score
with a click every 0.25 s for every site. Node ``a`` records with ``--archive``, node ``b`` does
not; the run is then collected and mixed (``tutti archive collect``, ``mix``). Printed:

- each click in the mixed archive against the time the journal gives it (the play's conductor
  time plus the cue's place in the score): median, p99 and max, in ms. This is the sum of where
  scsynth put the click and where the archive placed it;
- the same clicks against the test's own JACK recorder on the same server (``jackio.Recorder``):
  the archive's own placement error;
- each agent's CPU time per second of the run: the difference is what recording costs a site.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    concert_file,
    cpu_seconds,
    jack_server,
    node_agent,
    nodes_up,
    percentile,
    running,
    save,
)
from conductor.client import TuttiClient  # noqa: E402
from conductor.node.jackio import Recorder  # noqa: E402
from conductor.server.cluster import free_port  # noqa: E402
from conductor.tools import archive  # noqa: E402

TOKENS = {"conductor": "bench-c", "performer": "bench-p", "audience": "", "node": "bench-n"}
EVERY = 0.25


def onsets(samples: np.ndarray, rate: int) -> list[int]:
    out: list[int] = []
    for i in np.flatnonzero(np.abs(samples) > 0.5):
        if not out or i - out[-1] > 0.01 * rate:
            out.append(int(i))
    return out


def figures(errors: list[float]) -> dict[str, float]:
    ms = [e * 1000 for e in errors]
    return {"median_ms": statistics.median(ms), "p99_ms": percentile(ms, 0.99), "max_ms": max(ms), "n": len(ms)}


async def main(seconds: float, json_path: str | None) -> None:
    clicks = [1.0 + EVERY * k for k in range(int(seconds / EVERY))]
    score = (
        f"title: Archive bench\nduration: {seconds + 5}\nparts:\n  - {{id: pa, name: A, site: a}}\n"
        "  - {id: pb, name: B, site: b}\ncues:\n"
        + "".join(f"  - {{at: {c}, target: all, address: /s_new, args: [tutti_click, -1, 0, 0]}}\n" for c in clicks)
    )
    concert = concert_file(TOKENS, score, lookahead=0.3)
    folder = concert.parent / "recorded"
    async with (
        jack_server(f"t19-bench-archive-{time.time_ns() % 10**6}") as jack,
        running("serve", str(concert)) as url,
    ):
        a = await node_agent(
            url, TOKENS["node"], "na", free_port("127.0.0.1"), jack, "--site", "a", "--archive", str(folder / "na")
        )
        b = await node_agent(url, TOKENS["node"], "nb", free_port("127.0.0.1"), jack, "--site", "b")
        recorder = None
        try:
            await nodes_up(url, 2)
            recorder = Recorder(jack, "bench-archive-reference")
            recorder.listen_to("scsynth-na:out_1")
            async with aiohttp.ClientSession() as http, http.get(f"{url}/api/status") as r:
                wall = -(await r.json())["clock_minus_wall"]
            boss = TuttiClient(url, "conductor", TOKENS["conductor"])
            await boss.connect()
            cpu = {name: cpu_seconds(p.pid) for name, p in (("a", a), ("b", b))}
            began = time.monotonic()
            start = (await boss.command("play"))["t"]
            await asyncio.sleep(max(0.0, wall + start + clicks[-1] + 0.5 - time.time()))
            elapsed = time.monotonic() - began
            cost = {name: (cpu_seconds(p.pid) - cpu[name]) / elapsed for name, p in (("a", a), ("b", b))}
            await boss.close()
            heard = [o.time - wall for o in recorder.onsets()]
        finally:
            if recorder:
                recorder.close()
            for agent in (a, b):
                agent.terminate()
                await agent.wait()
    out = folder / "archive"
    await asyncio.to_thread(archive.collect, folder.parent / "journal.jsonl", [folder / "na"], out)
    await asyncio.to_thread(archive.mix, out)
    t0 = json.loads((out / "stems" / "start.json").read_text())["t"]
    mix, rate = soundfile.read(out / "mix.wav", always_2d=True)
    archived = [t0 + i / rate for i in onsets(mix[:, 0], rate)]
    due = [start + c for c in clicks]
    against_journal = [min(abs(a - d) for a in archived) for d in due]
    against_recorder = [min(abs(a - h) for a in archived) for h in heard]
    results = {
        "against_journal": figures(against_journal),
        "against_recorder": figures(against_recorder),
        "cpu_per_second": {"recording (a)": cost["a"], "not recording (b)": cost["b"]},
        "gaps": json.loads((out / "index.json").read_text())["tracks"][0]["gaps"],
    }
    print(f"{len(due)} clicks over {seconds:g} s, {len(archived)} in the archive, {len(heard)} heard by the recorder")
    for name in ("against_journal", "against_recorder"):
        f = results[name]
        what = f"archive {name.replace('_', ' the ')}"
        print(f"{what:<30} median {f['median_ms']:.3f} ms  p99 {f['p99_ms']:.3f} ms  max {f['max_ms']:.3f} ms")
    extra = (cost["a"] - cost["b"]) * 100
    print(f"agent CPU: {cost['a'] * 100:.1f} % recording, {cost['b'] * 100:.1f} % not: {extra:.1f} % of a core")
    print(f"gaps marked: {len(results['gaps'])} ({', '.join(sorted({g['kind'] for g in results['gaps']})) or 'none'})")
    save(json_path, results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.json))
