"""Performers' own sclang patterns in step across sites, through each site's Ableton Link session.

    .venv/bin/python bench/link.py [--beats 110] [--json out.json]

Two sites, each in its own network namespace (so each has its own Link session, as two cities
would), reach the conductor through ``tutti emulate`` links of 2 ms and 40 ms one way. At each
site a ``tutti node`` runs scsynth and drives its Link session; the site's sclang, with the
``Tutti`` class library, plays a click ``Pbind`` on ``Tutti.clock``. Both scsynths are clients of
one JACK server (dummy driver) in the root namespace (JACK's sockets are files, which namespaces
share), where one JACK-Client recorder hears both.

Printed: the spread between the two sites' onsets of the same beat, and each onset's error
against the score's beat times in conductor time (p50, p99, max of |value|), all onsets and
those with no xrun in the ``CALM`` seconds before them nor the ``BROKEN`` seconds after; the
errors of each site's first onsets after a tempo change (120 to 150 bpm: an onset still at the
old tempo would be a tenth of a beat off, 40 ms). The baseline, in the same run: each site's
sclang starts a ``TempoClock`` at the score's tempo when a play message (a ``to: sclang`` sound,
sent at once) arrives, as an ensemble would without Tutti. The floor, in the same run: the same
click as Tutti's timed cues (``sound`` at a conductor time, timetagged by each node for its
scsynth), without Link or sclang: how well scsynth and the recorder keep time on this JACK server.
Needs root (network namespaces), jackd, scsynth and sclang.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import concert_file, jack_server, percentile, running, save  # noqa: E402
from conductor.client import TuttiClient  # noqa: E402
from conductor.core.transport import Segment  # noqa: E402
from conductor.node.jackio import Recorder  # noqa: E402
from conductor.node.scsynth import jack_env  # noqa: E402
from conductor.tools import netns  # noqa: E402

TOKEN = "bench-link"
BPM = 120.0
BEATS_PER_BAR = 4
DELAYS = {"a": 0.002, "b": 0.040}  # one way, seconds
CALM = 5.0  # seconds without an xrun before an onset counts as undisturbed
BROKEN = 0.05  # ... nor one this soon after the onset (the recorder times a block by its neighbours')
FACE = ROOT / "sc_synths" / "Tutti"
SCORE = f"""title: Link
duration: 3600
tempo: {{bpm: {BPM:g}, beats_per_bar: {BEATS_PER_BAR}}}
schedule: immediate
parts:
  - {{id: pa, name: A, site: a}}
  - {{id: pb, name: B, site: b}}
sections:
  - {{id: one, start: 0}}
  - {{id: two, start: 60}}
"""
# Each site's sclang: the Tutti face's clock plays a click on every beat; the baseline starts a
# TempoClock when /naive/play arrives. The node's scsynth, not one sclang boots.
SCLANG = """(
// the node's scsynth, as the Tutti README says a performer reaches it
var s = Server.remote(\\site, NetAddr("127.0.0.1", %(port)d)), naive, link, click;
click = Pbind(
    \\instrument, \\tutti_click, \\dur, 1, \\amp, 1, \\group, 0, \\addAction, 0, \\sendGate, false
);
Server.default = s;
s.latency = %(lead)s;
Tutti.start(%(lead)s);
link = Tutti.play(click);
OSCFunc({ |msg| Tutti.remove(link); naive = click.play(TempoClock(msg[1] / 60)) }, '/naive/play');
OSCFunc({ naive !? { naive.stop } }, '/naive/stop');
OSCFunc({ |msg| Tutti.clock.tempo = msg[1] / 60 }, '/test/tempo'); // a performer setting their own tempo
"READY".postln;
)
"""
LEAD = 0.2  # the nodes' Link lead and sclang's latency (its default)
LOOKAHEAD = 0.3  # the concert's: changes reach the farther site (40 ms) more than LEAD ahead


@dataclass
class Site:
    name: str
    index: int
    delay: float
    netns: str = ""
    address: str = ""  # the root namespace's end of the site's link
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    sclang_log: Path | None = None


@contextlib.asynccontextmanager
async def namespace(site: Site, tag: int) -> AsyncIterator[None]:
    """A network namespace for the site, joined to the root one by a veth pair (2001:db8::/32)."""
    site.netns = f"tutti-link{site.index}-{tag}"
    outside = f"tlk{site.index}{tag % 10**7}"
    prefix = f"2001:db8:{tag % 0xFFFF:x}:{site.index}"
    site.address = f"{prefix}::1"
    async with netns.namespace(site.netns):  # deleting it deletes the veth pair too
        await netns.veth(site.netns, "eth0", None, outside)
        await netns.address(None, outside, f"{prefix}::1/64")
        await netns.address(site.netns, "eth0", f"{prefix}::2/64")
        yield


async def in_namespace(site: Site, log: Path, *command: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    out = log.open("wb")
    proc = await asyncio.create_subprocess_exec(
        *netns.exec_in(site.netns, *command), cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
    )
    out.close()
    site.processes.append(proc)
    return proc


async def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} (after {seconds:g} s)")
        await asyncio.sleep(0.1)


class Sites:
    """The conductor, two sites with node, scsynth and sclang each, and a recorder hearing both."""

    def __init__(self, folder: Path, concert: dict[str, Any] | None = None):
        self.folder = folder
        self.concert = concert or {}
        self.tag = os.getpid()
        self.jack = f"tutti-link-{self.tag}"
        self.sites = [Site(name, i, delay) for i, (name, delay) in enumerate(DELAYS.items())]
        self.url = ""
        self.boss: TuttiClient | None = None
        self.recorder: Recorder | None = None
        self._last: dict[str, dict[str, Any]] = {}  # node -> its last health
        self.clock_minus_wall = 0.0

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Sites]:
        concert = concert_file({"conductor": TOKEN, "node": TOKEN}, SCORE, lookahead=LOOKAHEAD, **self.concert)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(jack_server(self.jack))
            self.url = await stack.enter_async_context(running("serve", str(concert)))
            conductor = self.url.removeprefix("http://")
            stack.push_async_callback(self._stop)
            for site in self.sites:
                await stack.enter_async_context(namespace(site, self.tag))
                link = await stack.enter_async_context(
                    running("emulate", "--listen", f"[{site.address}]:0", "--to", conductor, "--delay", str(site.delay))
                )
                host, _, port = link.rpartition(":")
                await self._start_site(site, f"http://[{host}]:{port}")
            self.boss = TuttiClient(self.url, "conductor", TOKEN)
            await self.boss.connect()
            stack.push_async_callback(self.boss.close)
            await wait_for(self._ready, 90, "the sites did not come up")
            self.recorder = Recorder(self.jack, "link-recorder", ports=len(self.sites))
            stack.callback(self.recorder.close)
            for site in self.sites:
                self.recorder.listen_to(f"scsynth-site-{site.name}:out_1", site.index)
            yield self

    async def _start_site(self, site: Site, url: str) -> None:
        env = jack_env(self.jack)
        await in_namespace(
            site, self.folder / f"node-{site.name}.log",
            sys.executable, "-m", "conductor", "-v", "node", "--url", url, "--token", TOKEN,
            "--name", f"site-{site.name}", "--site", site.name, "--port", "57110",
            "--jack-server", self.jack, "--no-jack", "--link-lead", str(LEAD), env=env,
        )  # fmt: skip
        await wait_for(lambda: self._health(site, "up"), 60, f"site {site.name}'s scsynth never came up")
        config = self.folder / "sclang.yaml"
        config.write_text(f"includePaths:\n  - {FACE}\nexcludePaths: []\npostInlineWarnings: false\n")
        script = self.folder / f"site-{site.name}.scd"
        script.write_text(SCLANG % {"port": 57110, "lead": LEAD})
        site.sclang_log = self.folder / f"sclang-{site.name}.log"
        env = {**env, "QT_QPA_PLATFORM": "offscreen", "QTWEBENGINE_DISABLE_SANDBOX": "1"}
        await in_namespace(site, site.sclang_log, "sclang", "-l", str(config), str(script), env=env)

    def health(self, site: Site) -> dict[str, Any]:
        return self._last.get(f"site-{site.name}", {})

    async def _health(self, site: Site, key: str) -> bool:
        await self.status()
        return bool(self.health(site).get(key))

    async def status(self) -> dict[str, Any]:
        """The conductor's status; keeps the nodes' health and the conductor's clock minus wall time."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/api/status") as r:
            status = await r.json()
        self._last = {c["name"]: c["health"] or {} for c in status["clients"] if c["role"] == "node"}
        self.clock_minus_wall = status["clock_minus_wall"]
        return status

    async def _ready(self) -> bool:
        """Every node's clock settled (here all read one system clock, so the truth is known: within
        half a millisecond, as in a concert long before the piece), its sclang joined its Link session."""
        await self.status()
        for site in self.sites:
            health = self.health(site)
            if health.get("samples", 0) < 32 or abs(health.get("offset", 1.0) - self.clock_minus_wall) > 0.0005:
                return False
            if not (health.get("link") or {}).get("peers"):
                return False
            assert site.sclang_log is not None
            if b"READY" not in site.sclang_log.read_bytes():
                return False
        return True

    async def _stop(self) -> None:
        for site in self.sites:
            for proc in site.processes:
                if proc.returncode is None:
                    proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    # --- what was heard ---------------------------------------------------------------------------

    def onsets(self, site: Site) -> list[float]:
        assert self.recorder is not None
        return [o.time for o in self.recorder.onsets(port=site.index)]

    def beats(self, start: float, end: float) -> list[float]:
        """The wall-clock times of the score's beats while it played, between conductor times start and end."""
        assert self.boss is not None and self.boss.transport is not None
        entries = self.boss.transport.segments.entries()
        out = []
        for (t, seg), nxt in zip(entries, [*entries[1:], (end, None)], strict=True):
            if not seg.playing:
                continue
            out += [b - self.clock_minus_wall for b in beat_times(seg, max(t, start), min(nxt[0], end))]
        return out


def beat_times(segment: Segment, start: float, end: float) -> list[float]:
    """Conductor times of the score's whole beats in [start, end) while ``segment`` plays."""
    beat = 60.0 / BPM  # score seconds a beat
    first = segment.position(start) / beat
    k = int(-(-first // 1))
    out = []
    while (t := segment.t + (k * beat - segment.pos) / segment.rate) < end:
        out.append(t)
        k += 1
    return out


def nearest(times: list[float], t: float) -> float:
    return min(times, key=lambda x: abs(x - t)) if times else float("inf")


def figures(values: list[float]) -> dict[str, float]:
    ms = [abs(v) * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p99_ms": percentile(ms, 0.99) if ms else float("nan"),
        "max_ms": max(ms, default=float("nan")),
    }


def measure(sites: Sites, start: float, end: float, beat: float, targets: list[float] | None = None) -> dict[str, Any]:
    """Spread and errors of the onsets heard between wall times start and end, against the score's
    beats (or ``targets``, wall times)."""
    assert sites.recorder is not None
    if targets is None:  # one may be early
        targets = sites.beats(start + sites.clock_minus_wall, end + beat + sites.clock_minus_wall)
    heard = [[t for t in sites.onsets(site) if start <= t < end] for site in sites.sites]
    xruns = list(sites.recorder.xruns)

    def calm(t: float) -> bool:  # the recorder's clock line also breaks just before an xrun
        return not any(-BROKEN < t - x < CALM for x in xruns)

    errors = [t - nearest(targets, t) for times in heard for t in times]
    calm_errors = [t - nearest(targets, t) for times in heard for t in times if calm(t)]
    spreads = [b - nearest(heard[0], b) for b in heard[1]]
    spreads = [s for s in spreads if abs(s) < beat / 2]
    calm_spreads = [b - nearest(heard[0], b) for b in heard[1] if calm(b)]
    calm_spreads = [s for s in calm_spreads if abs(s) < beat / 2]
    return {
        "signed_error_ms": [[round((t - nearest(targets, t)) * 1000, 3) for t in times] for times in heard],
        "onsets": [len(times) for times in heard],
        "beats": len(targets),
        "xruns": len(xruns),
        "error": figures(errors),
        "error_calm": figures(calm_errors),
        "spread": figures(spreads),
        "spread_calm": figures(calm_spreads),
    }


def after_change(sites: Sites, site: Site, change: float, targets: list[float], count: int = 4) -> list[float]:
    """The errors (ms) of a site's first onsets after a change at wall time ``change``."""
    heard = [t for t in sites.onsets(site) if t >= change][:count]
    return [round(float(t - nearest(targets, t)) * 1000, 3) for t in heard]


def fresh(recorder: Recorder) -> None:
    """Forget what was recorded, not the xruns: one just before still disturbs the first onsets."""
    xruns = list(recorder.xruns)
    recorder.clear()
    recorder.xruns.extend(xruns)


async def until_heard(sites: Sites, wall: float) -> None:
    """Wait until wall time ``wall`` has sounded (and the recorder has it)."""
    await asyncio.sleep(max(0.0, wall - time.time()) + LEAD + 0.1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beats", type=int, default=110, help="beats per phase (at least 100 for p99)")
    parser.add_argument("--json")
    args = parser.parse_args()
    folder = Path("/tmp") / f"tutti-bench-link-{time.time_ns()}"
    folder.mkdir()
    results: dict[str, Any] = {}
    async with Sites(folder).run() as sites:
        boss, recorder = sites.boss, sites.recorder
        assert boss is not None and recorder is not None
        beat = 60.0 / BPM
        fresh(recorder)
        started = time.time()
        played = await boss.command("play")
        await asyncio.sleep(args.beats // 2 * beat)
        tempo = await boss.command("tempo", bpm=BPM * 1.25)
        changed = tempo["t"] - sites.clock_minus_wall
        await asyncio.sleep(args.beats // 2 * beat / 1.25)
        paused = await boss.command("pause")
        await until_heard(sites, paused["t"] - sites.clock_minus_wall)
        await sites.status()
        end = paused["t"] - sites.clock_minus_wall
        results["link"] = measure(sites, started, end, beat)
        targets = sites.beats(played["t"], paused["t"])
        results["link"]["after_tempo_change_ms"] = [after_change(sites, site, changed, targets) for site in sites.sites]
        results["link"]["after_pause"] = [
            len([t for t in sites.onsets(site) if t > end + 0.001]) for site in sites.sites
        ]

        # The baseline: a TempoClock started by a play message at each site, the transport playing too.
        await boss.command("stop")
        await boss.command("tempo", bpm=BPM)
        fresh(recorder)
        started = time.time()
        await boss.command("play")
        await boss.sound("/naive/play", [BPM], to="sclang")
        await asyncio.sleep(args.beats * beat)
        paused = await boss.command("pause")
        await boss.sound("/naive/stop", [], to="sclang")
        await until_heard(sites, paused["t"] - sites.clock_minus_wall)
        await sites.status()
        results["naive"] = measure(sites, started, paused["t"] - sites.clock_minus_wall, beat)

        # The floor, in the same run: the same click as timed cues (the conductor's sound, at a
        # conductor time, timetagged by each node for its scsynth), no Link and no sclang. What
        # this shows too is scsynth's and the recorder's own timing on this JACK server.
        fresh(recorder)
        started = time.time()
        first = boss.now() + 1.0
        times = [first + k * beat for k in range(args.beats)]
        for t in times:
            await asyncio.sleep(max(0.0, t - 0.5 - boss.now()))  # each half a second ahead
            answer = await boss.sound("/s_new", ["tutti_click", -1, 0, 0, "amp", 1], at=t, schedule="together")
            assert answer.get("ok"), answer
        await until_heard(sites, times[-1] - sites.clock_minus_wall)
        await sites.status()
        wall = [t - sites.clock_minus_wall for t in times]
        results["cues"] = measure(sites, started, wall[-1] + beat / 2, beat, wall)

    print(f"two sites (one-way {', '.join(f'{d * 1000:g} ms' for d in DELAYS.values())}), {BPM:g} bpm; ms")
    print(f"{'clock':<8}{'onsets':<10}{'subset':<8}{'n':>5}{'spread p50':>11}{'p99':>8}{'max':>8}", end="")
    print(f"{'error p50':>11}{'p99':>8}{'max':>8}{'xruns':>7}")
    for name, r in results.items():
        for subset in ("", "_calm"):
            s, e = r["spread" + subset], r["error" + subset]
            print(
                f"{name:<8}{'/'.join(map(str, r['onsets'])):<10}{subset.strip('_') or 'all':<8}{e['n']:>5}"
                f"{s['p50_ms']:11.3f}{s['p99_ms']:8.3f}{s['max_ms']:8.3f}"
                f"{e['p50_ms']:11.3f}{e['p99_ms']:8.3f}{e['max_ms']:8.3f}{r['xruns']:>7}"
            )
    link = results["link"]
    print(f"tempo change ({BPM:g} -> {BPM * 1.25:g} bpm), error of each site's first onsets after it (ms):")
    print(f"  {link['after_tempo_change_ms']}; onsets after the pause: {link['after_pause']}")
    save(args.json, results)


async def interruptible() -> None:
    """main(), cancelled by SIGTERM or SIGINT so that the namespaces and processes are taken down."""
    task = asyncio.ensure_future(main())
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    asyncio.run(interruptible())
