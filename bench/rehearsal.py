"""The four-campus concert rehearsed on this machine: how long until all green, and after each host's restart.

    .venv/bin/python bench/rehearsal.py [--json out.json] [--screens test-output/screens]
    .venv/bin/python bench/rehearsal.py --distances [--delays '{"delays": {"pku": 12}}'] [--json out.json]

``deploy/four-rivers.yaml`` is brought up by ``tutti deploy rehearse``'s harness as six namespaced
hosts (the conductor, the hub, one machine per campus). Printed: the seconds from the last process
starting until the conductor lists every part's node up, every JackTrip link connected and
measured and every node's clock within 1 ms of the conductor's (all hosts read one system clock,
so the truth is known); the seconds ``tutti deploy check`` takes on each host and what it says; how
far from its target time a cue played together was heard at each campus (a recorder on each
campus's host); and, for each host in turn (the hub last), the seconds from killing its Tutti
process (the unit's restart policy brings it back after its ``RestartSec``) until all green again,
or what is still not green after 60 s. With ``--screens``
it also shoots the console's go / no-go table all green, and with one campus's JACK server frozen
(an iPad and a phone each).

With ``--distances`` it rehearses twice instead: the hosts on one bridge, then joined through the
user-space WAN with the concert file's ``rehearsal`` section (or ``--delays``); printed: each pair of
hosts' delay, and for each campus its link's round trip on the bridge and with the delays, its two
ways (measured with the node's clock: each carries half the campus's asymmetry, their sum does not)
and its clock's offset against the truth and its error bound, 10 s after the link was first measured.
Needs root (network namespaces), jackd, scsynth and jacktrip.

Run as a program with ``record SERVER PORT SCSYNTH_PORT`` it is the recorder a campus's host runs:
it prints ``ready`` once it listens to the JACK output port ``PORT``, reads the cue's target wall
time, and prints the onsets it heard (wall time, JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conductor.client import TuttiClient  # noqa: E402
from conductor.core.concert import load_concert  # noqa: E402
from conductor.core.deployment import RehearsalSettings  # noqa: E402
from conductor.tools.deploy import jack_server  # noqa: E402
from conductor.tools.rehearse import Rehearsal, Unit  # noqa: E402

CONCERT = ROOT / "deploy" / "four-rivers.yaml"
CLOCK_BOUND = 0.001  # seconds: every node's clock against the conductor's
WAN_SLACK = 0.003  # seconds more for a clock's error bound, over a rehearsal's delays
CLICK = ["tutti_click", -1, 0, 0]
PARTNER = 0.02  # seconds from the cue to the recorder's own click, sent without the node's correction
BOUND = 0.010  # seconds: what is heard this near a target is its click (scsynth's clock may stray after an xrun)
WAIT_MOST = 60.0  # seconds a helper on a host (a recorder, `tutti deploy check`) may take, on a busy machine


def record(server: str, port: str, scsynth: int) -> None:
    """The recorder on a campus's host: it records ``port`` and, for the target wall time it reads,
    sends its scsynth (on 127.0.0.1: scsynth is IPv4 only) a click of its own timetagged ``PARTNER``
    later: where scsynth itself places a timetag then, without the node's correction (the baseline)."""
    from conductor.core.osc import osc_bundle
    from conductor.node.jackio import Recorder

    recorder = Recorder(server, "rehearsal-recorder")
    recorder.listen_to(port)
    print("ready", flush=True)
    target = float(sys.stdin.readline())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as direct:
        direct.sendto(osc_bundle(target + PARTNER, "/s_new", CLICK), ("127.0.0.1", scsynth))
    time.sleep(max(0.0, target + PARTNER + 0.5 - time.time()))
    # Out of JACK before the onsets are looked for: a Python callback waiting for the interpreter
    # while the main thread searches thousands of blocks is late, and a campus's JACK server was
    # found stuck for good after such a recorder ("not finished", then every client after it).
    # JACK-Client's deactivate waited for ever once here: then the process's end leaves JACK.
    closed = recorder.close()
    print(json.dumps({"onsets": [o.time for o in recorder.onsets()], "xruns": recorder.xruns}), flush=True)
    if not closed:
        os._exit(0)


async def status(rehearsal: Rehearsal) -> dict[str, Any]:
    """The conductor's /api/status, through the rehearsal's loopback forward (its certificate names
    the conductor's deployment address, not this one)."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"{rehearsal.console_url}/api/status", ssl=False) as r,
    ):
        return await r.json()


def clock_expected(rehearsal: Rehearsal) -> dict[str, tuple[float, float]]:
    """For each node of a rehearsal with delays, seconds its clock is expected off the conductor's,
    and the least error bound its estimator can give: half its campus's asymmetry (the rehearsal
    section's ``to`` less ``back``), which no clock estimator can see, and half its round trip (the
    estimator's bound is half its fastest round trip: what an asymmetry could hide)."""
    settings = rehearsal.concert.settings.rehearsal
    if settings is None:
        return {}
    return {
        node.name: ((c.to - c.way_back) / 2000, (c.to + c.way_back) / 2000)
        for site, machines in rehearsal.deployment.sites.items()
        for node in machines.nodes
        for c in [settings.campus(site)]
    }


def not_green(
    rehearsal: Rehearsal, status: dict[str, Any], since: float = 0.0, rejoined: set[str] | None = None
) -> list[str]:
    """What keeps the concert from all green: each part's node up, each JackTrip end connected and
    measured, each node's clock within 1 ms (against the truth: one system clock here, less what
    ``clock_expected`` expects), and the conductor's own go / no-go table; and the ``rejoined``
    nodes joined since conductor time ``since``."""
    audio = rehearsal.concert.settings.audio
    assert audio is not None
    nodes = {c["name"]: c for c in status["clients"] if c["role"] == "node"}
    problems = []
    for part in rehearsal.concert.score.score.parts:
        if not any(part.id in c["parts"] and (c["health"] or {}).get("up") for c in nodes.values()):
            problems.append(f"part {part.id}: no node up")
    links = {
        (link["site"], link["role"]): link for c in nodes.values() for link in (c["health"] or {}).get("links", [])
    }
    for site in [x.site for x in audio.links]:
        link = links.get((site, "client"), {})
        if link.get("state") != "connected" or link.get("latency_ms") is None:
            impulses = f"{link.get('impulses_sent')} impulses sent, {link.get('impulses_heard')} heard"
            problems.append(
                f"link {site}: {link.get('state', 'absent')}, measured {link.get('latency_ms')}"
                f" ({impulses}, restarts {link.get('restarts')}; {link.get('probe_error') or link.get('last_error')})"
            )
    hub = links.get((audio.hub.site, "hub"), {}) if audio.hub else {}
    if audio.hub and (hub.get("state") != "connected" or hub.get("peers") != len(audio.links)):
        problems.append(f"hub: {hub.get('state', 'absent')}, {hub.get('peers')} peers")
    for name in rejoined or set():
        if name not in nodes or nodes[name]["joined"] < since:
            problems.append(f"{name}: not joined again")
    expected = clock_expected(rehearsal)
    for name, c in nodes.items():
        health = c["health"] or {}
        skew, floor = expected.get(name, (0.0, 0.0))
        off = abs(health.get("offset", 1.0) - status["clock_minus_wall"] - skew)
        # Far away, the bound holds each leg's quickest exchange: the WAN's timers and a busy
        # machine add to both.
        bound = CLOCK_BOUND + (floor + WAN_SLACK if floor else 0.0)
        if off > CLOCK_BOUND or health.get("error", 1.0) > bound:
            problems.append(f"{name}: clock off by {off * 1000:.2f} ms, error {health.get('error', 1.0) * 1000:.2f} ms")
    problems += [f"no-go: {row['what']}: {row['detail']}" for row in status.get("preflight", []) if not row["go"]]
    return problems


async def until_green(
    rehearsal: Rehearsal,
    within: float,
    since: float = 0.0,
    rejoined: set[str] | None = None,
    seen: dict[str, float] | None = None,
) -> float:
    """Seconds until all green, polling; raises with what is not green after ``within`` seconds.
    ``seen`` gets each problem's first words and the seconds (since ``start``) it was last seen."""
    start = time.monotonic()
    problems = ["no status yet"]
    while time.monotonic() - start < within:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            problems = not_green(rehearsal, await status(rehearsal), since, rejoined)
            if seen is not None:
                seen.update({" ".join(p.split()[:3]).rstrip(":,"): time.monotonic() - start for p in problems})
            if not problems:
                return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"not all green after {within:g} s: {problems}")


async def links_measured(rehearsal: Rehearsal, within: float) -> dict[str, dict[str, float]]:
    """Once every campus's link has its round trip and both its ways measured (the way up at the hub,
    from the campus; the way down at the campus, from the hub): for each campus, those in ms, and its
    node's clock offset against the truth and its error bound (ms)."""
    sites = rehearsal.deployment.sites
    audio = rehearsal.concert.settings.audio
    assert audio is not None and audio.hub is not None
    deadline = time.monotonic() + within
    while True:
        now = await status(rehearsal)
        nodes = {c["name"]: c for c in now["clients"] if c["role"] == "node"}
        links = {link["site"]: link for c in nodes.values() for link in (c["health"] or {}).get("links", [])}
        hub = links.get(audio.hub.site, {})
        out = {}
        for site, machines in sites.items():
            link, health = links.get(site, {}), (nodes.get(machines.nodes[0].name, {}).get("health") or {})
            up, down = (hub.get("way_in_ms") or {}).get(site), (link.get("way_in_ms") or {}).get(audio.hub.site)
            if None not in (up, down, link.get("latency_ms"), health.get("offset")):
                out[site] = {
                    "rtt": link["latency_ms"], "up": up, "down": down, "error": health["error"] * 1000,
                    "clock": (health["offset"] - now["clock_minus_wall"]) * 1000,
                }  # fmt: skip
        if len(out) == len(sites):
            return out
        assert time.monotonic() < deadline, f"not measured after {within:g} s: {set(sites) - set(out)}"
        await asyncio.sleep(0.2)


async def check(rehearsal: Rehearsal, host: str) -> tuple[int, str, float]:
    """``tutti deploy check`` on a host: its exit status, its output, its seconds."""
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *rehearsal.check_command(host), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(WAIT_MOST):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"`tutti deploy check` on {host} had not ended after {WAIT_MOST:g} s") from None
    return proc.returncode or 0, out.decode(), time.monotonic() - start


async def cue_heard(rehearsal: Rehearsal, boss: TuttiClient, ahead: float = 1.0) -> dict[str, dict[str, Any]]:
    """A click played together at every campus, recorded on each campus's own host: for each node,
    the seconds from the cue's target time to what was heard (``cue``), the same for the recorder's
    own click sent straight to scsynth (``partner``, less ``PARTNER``), and the xruns around."""
    deployment = rehearsal.deployment
    nodes = [(n.name, n.host, n.port) for machines in deployment.sites.values() for n in machines.nodes]
    recorders = {}
    for name, host, port in nodes:
        server = rehearsal.jack_servers[jack_server(name)]
        command = (sys.executable, __file__, "record", server, f"scsynth-{name}:out_1", str(port))
        recorders[name] = await asyncio.create_subprocess_exec(
            *rehearsal.hosts[host].command(*command), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
    try:
        for proc in recorders.values():
            assert proc.stdout is not None
            async with asyncio.timeout(WAIT_MOST):  # numpy and libjack on a busy machine
                line = await proc.stdout.readline()
            assert line == b"ready\n", f"a recorder did not start: {line!r}"
        played = await boss.sound("/s_new", CLICK, target="all", at=boss.now() + ahead)
        assert played["ok"], played
        target = played["t"] - (await status(rehearsal))["clock_minus_wall"]  # wall time
        for proc in recorders.values():  # all at once: each sends its own click ahead of the target
            assert proc.stdin is not None
            proc.stdin.write(f"{target!r}\n".encode())
            await proc.stdin.drain()
        heard = {}
        for name, proc in recorders.items():
            try:
                async with asyncio.timeout(WAIT_MOST):
                    out, _ = await proc.communicate()
            except TimeoutError:
                raise AssertionError(f"{name}'s recorder had said nothing after {WAIT_MOST:g} s") from None
            result = json.loads(out.decode().splitlines()[-1])
            near = [t - target for t in result["onsets"] if abs(t - target) < BOUND]
            partner = [t - target - PARTNER for t in result["onsets"] if abs(t - target - PARTNER) < BOUND]
            heard[name] = {"cue": near, "partner": partner, "xruns": [x - target for x in result["xruns"]]}
        return heard
    finally:
        for proc in recorders.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def tutti_unit(rehearsal: Rehearsal, host: str) -> Unit:
    """A host's Tutti process: the conductor, the hub's node agent, or a campus's node agent."""
    return next(u for u in rehearsal.units_of(host) if "jackd" not in Path(u.argv[0]).name)


async def restart(
    rehearsal: Rehearsal, host: str, within: float, seen: dict[str, float] | None = None
) -> tuple[float, float]:
    """Kill a host's Tutti process; the seconds until its unit started it again, and until all green
    with its nodes (every node, for the conductor's host) joined again (``seen``: as ``until_green``'s,
    in seconds since the kill)."""
    d = rehearsal.deployment
    if host == d.conductor:
        rejoined = {n.name for machines in d.sites.values() for n in machines.nodes} | (
            {d.hub.name} if d.hub else set()
        )
    else:
        rejoined = {n.name for machines in d.sites.values() for n in machines.nodes if n.host == host}
        rejoined |= {d.hub.name} if d.hub and d.hub.host == host else set()
    unit = tutti_unit(rehearsal, host)
    assert unit.proc is not None
    starts = len(unit.starts)
    since = time.time() + (await status(rehearsal))["clock_minus_wall"]  # conductor time
    killed = time.monotonic()
    os.kill(unit.proc.pid, signal.SIGKILL)
    while len(unit.starts) == starts:
        assert time.monotonic() - killed < within, f"{unit.name} on {host} was not started again"
        await asyncio.sleep(0.02)
    back = unit.starts[-1] - killed
    waited = time.monotonic() - killed
    last: dict[str, float] = {}
    await until_green(rehearsal, within, since, rejoined, last)
    if seen is not None:
        seen.update({problem: t + waited for problem, t in last.items()})
    return back, time.monotonic() - killed


@contextlib.asynccontextmanager
async def rehearsed(
    folder: Path, delays: RehearsalSettings | None = None, tag: str = f"t20-{os.getpid()}"
) -> AsyncIterator[tuple[Rehearsal, TuttiClient]]:
    """The concert up (``tutti deploy rehearse``'s harness), and a conductor-role client of it; its
    hosts on one bridge, or with ``delays`` in place of the file's rehearsal section."""
    concert = load_concert(CONCERT, resolve_tokens=False)
    concert.settings = concert.settings.model_copy(update={"rehearsal": delays})
    rehearsal = Rehearsal(concert, folder, tag)
    async with rehearsal.run():
        boss = TuttiClient(rehearsal.console_url, "conductor", rehearsal.token("conductor"), ca=str(rehearsal.ca))
        assert boss._ssl is not None
        boss._ssl.check_hostname = False  # reached through the loopback forward: see status()
        await boss.connect()
        try:
            yield rehearsal, boss
        except BaseException:  # what each machine said: a failure far away (in CI) must be readable
            for log in sorted((folder / "logs").glob("*.log")):
                print(f"--- {log.name}, last lines:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
            raise
        finally:
            await boss.close()


async def console_shots(rehearsal: Rehearsal, out: Path, state: str) -> None:
    """The console's go / no-go table once it says ``state`` (GO or NO-GO), on an iPad and a phone."""
    from playwright.async_api import async_playwright

    from bench.harness import CHROMIUM, CHROMIUM_ARGS

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        sizes = {"ipad-landscape": (1180, 820), "ipad-portrait": (820, 1180), "phone": (390, 844)}
        for name, (width, height) in sizes.items():
            context = await browser.new_context(viewport={"width": width, "height": height}, ignore_https_errors=True)
            page = await context.new_page()
            await page.goto(f"{rehearsal.console_url}/console?token={rehearsal.token('conductor')}")
            await page.wait_for_function(
                f"document.querySelector('#preflight-summary').textContent.startsWith('{state}:')", timeout=60_000
            )
            await page.evaluate("document.querySelector('#preflight-box').scrollIntoView()")
            path = out / f"console-preflight-{state.lower()}-{name}.png"
            await page.screenshot(path=str(path))
            print(path)
            whole = out / f"console-{state.lower()}-{name}-whole.png"  # every table, links and ways too
            await page.screenshot(path=str(whole), full_page=True)
            print(whole)
            await context.close()
        await browser.close()


async def distances(delays: RehearsalSettings, settle: float = 10.0) -> dict[str, Any]:
    """Each campus's link as it measures itself, with the hosts on one bridge and then through the
    WAN with ``delays``: its figures ``settle`` seconds after it was first measured (the jitter
    buffers trim their queues in the first seconds)."""
    import tempfile

    figures: dict[str, Any] = {}
    for case, section in (("bridge", None), ("delays", delays)):
        with tempfile.TemporaryDirectory(prefix="tutti-bench-rehearsal-") as folder:
            async with rehearsed(Path(folder), section) as (rehearsal, _):
                await until_green(rehearsal, 120)
                await links_measured(rehearsal, 60)
                cpu, forwarded = time.process_time(), rehearsal.router.counts.forwarded if rehearsal.router else 0
                await asyncio.sleep(settle)
                figures[case] = await links_measured(rehearsal, 60)
                if rehearsal.router:  # this process: the router, and little else while it waits
                    figures["router_cpu"] = (time.process_time() - cpu) / settle
                    figures["packets_per_s"] = (rehearsal.router.counts.forwarded - forwarded) / settle
                    figures["dropped"] = rehearsal.router.dropped() or "none"
                    figures["table"] = rehearsal.delay_table()
    print("one-way delays (ms), from each host (rows) to each other (columns):")
    for row in figures["table"]:
        print(f"  {row}")
    print(
        f"the WAN carried {figures['packets_per_s']:.0f} packets/s for {figures['router_cpu'] * 100:.0f} % of a core;"
        f" dropped: {figures['dropped']}"
    )
    print(
        f"{'campus':<8}{'to':>6}{'back':>6}{'rtt bridge':>12}{'rtt':>9}{'added':>8}"
        f"{'up':>9}{'down':>9}{'up+down':>9}{'clock off':>11}{'bound':>8}   (ms)"
    )
    for site, m in figures["delays"].items():
        campus = delays.campus(site)
        added = m["rtt"] - figures["bridge"][site]["rtt"]
        print(
            f"{site:<8}{campus.to:6g}{campus.way_back:6g}{figures['bridge'][site]['rtt']:12.3f}{m['rtt']:9.3f}"
            f"{added:8.3f}{m['up']:9.3f}{m['down']:9.3f}{m['up'] + m['down']:9.3f}{m['clock']:+11.2f}{m['error']:8.2f}"
        )
    return figures


async def main(screens: Path | None) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tutti-bench-rehearsal-") as folder:
        async with rehearsed(Path(folder)) as (rehearsal, boss):
            last = max(u.starts[-1] for u in rehearsal.units)
            green = await until_green(rehearsal, 120) + (time.monotonic() - last)
            figures: dict[str, Any] = {"all_green_after_last_start_s": round(green, 2)}
            print(f"all green {green:.2f} s after the last process started")
            if screens:
                await console_shots(rehearsal, screens, "GO")
            checks = await asyncio.gather(*(check(rehearsal, host) for host in rehearsal.hosts))
            for host, (code, text, seconds) in zip(rehearsal.hosts, checks, strict=True):
                print(f"tutti deploy check on {host:<16} {seconds:5.2f} s  {text.strip().splitlines()[-1]}")
                figures.setdefault("check_s", {})[host] = [code, round(seconds, 2)]
            heard = await cue_heard(rehearsal, boss)
            for name, h in heard.items():
                xruns = sum(-1.0 < x < 0.05 for x in h["xruns"])
                print(
                    f"cue heard at {name:<8} {', '.join(f'{e * 1000:+.3f}' for e in h['cue'])} ms from its target;"
                    f" a timetag sent straight to scsynth, {', '.join(f'{e * 1000:+.3f}' for e in h['partner'])} ms"
                    f" ({xruns} xruns in the second before)"
                )
                figures.setdefault("cue_ms", {})[name] = {"target": h["cue"], "straight": h["partner"], "xruns": xruns}
            hub = rehearsal.deployment.hub.host if rehearsal.deployment.hub else None
            # The hub last: its sites do not join a restarted hub again (deploy/README.md).
            for host in sorted(rehearsal.hosts, key=lambda h: (h == hub, h == rehearsal.deployment.conductor)):
                unit = tutti_unit(rehearsal, host)
                seen: dict[str, float] = {}
                try:
                    back, green = await restart(rehearsal, host, 60, seen)
                except AssertionError as e:  # jacktrip 1.7 clients wait for a restarted hub's audio for ever
                    print(f"killed {unit.name:<26} on {host:<16} {e}")
                    figures.setdefault("restart_s", {})[host] = None
                    continue
                print(f"killed {unit.name:<26} on {host:<16} started again {back:5.2f} s, all green {green:5.2f} s")
                cleared = sorted(seen.items(), key=lambda kv: kv[1])
                print("    last seen (s after the kill): " + "; ".join(f"{p} {t:.1f}" for p, t in cleared))
                figures.setdefault("restart_s", {})[host] = [round(back, 2), round(green, 2)]
            if screens:  # a campus's JACK server frozen: its rows say what to fix
                jack = next(u for u in rehearsal.units if u.name == "tutti-jack-pku-1.service")
                assert jack.proc is not None
                os.killpg(jack.proc.pid, signal.SIGSTOP)
                await console_shots(rehearsal, screens, "NO-GO")
                os.killpg(jack.proc.pid, signal.SIGCONT)
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--json", help="write the figures here")
        parser.add_argument("--screens", type=Path, help="also shoot the console's go / no-go table into this folder")
        parser.add_argument(
            "--distances", action="store_true",
            help="instead: each link measured on one bridge, then with the concert file's rehearsal section",
        )  # fmt: skip
        parser.add_argument("--delays", help="with --distances: this rehearsal section (JSON) in place of the file's")
        args = parser.parse_args()
        if args.distances:
            section = json.loads(args.delays) if args.delays else load_concert(CONCERT, False).settings.rehearsal
            figures = asyncio.run(distances(RehearsalSettings.model_validate(section)))
        else:
            figures = asyncio.run(main(args.screens))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
