"""The ``tutti`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import math
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from conductor.core import journal
from conductor.core.concert import Concert, concert_for_score, is_concert, load_concert
from conductor.core.score import load_score, resolved_times, score_warnings, sketch_problems
from conductor.core.yamlcheck import InvalidFile, YamlDocument

T = TypeVar("T")
GIL_SWITCH = 0.0005  # seconds: how soon a node's JACK callbacks get the GIL from its event loop

if TYPE_CHECKING:
    from conductor.core.transport import Change
    from conductor.server.conductor import Conductor


def check(paths: list[str]) -> int:
    """Validate scores and concert files; print every problem; exit 1 if there are any."""
    failed = 0
    for path in paths:
        try:
            if is_concert(path):
                concert = load_concert(path, resolve_tokens=False)
                for warning in concert.warnings:
                    print(warning, file=sys.stderr)
                print(f"{path}: ok: concert '{concert.title}' with score {concert.score.path}")
            else:
                loaded = load_score(path)
                if problems := sketch_problems(loaded):
                    raise InvalidFile(problems)
                doc = YamlDocument(path)
                for loc, message in score_warnings(loaded.score):
                    print(f"{doc.problem(loc, message)} (warning)", file=sys.stderr)
                score = loaded.score
                print(
                    f"{path}: ok: '{score.title}', {len(score.parts)} parts, {len(score.sections)} sections, "
                    f"{len(score.cues)} cues, {score.duration:g} s"
                )
                for line in resolved_times(score):
                    print(f"  {line}")
        except InvalidFile as e:
            failed += 1
            print(e, file=sys.stderr)
            print(f"{path}: {len(e.problems)} problem(s)", file=sys.stderr)
    return 1 if failed else 0


def rehearse(concert: Concert, outdir: str | None, tag: str) -> int:
    from conductor.tools.rehearse import rehearse as run_rehearsal

    if os.geteuid() != 0:
        print("tutti deploy rehearse makes network namespaces: run it as root (sudo)", file=sys.stderr)
        return 1

    async def main() -> int:
        return await run_rehearsal(concert, Path(folder), tag, stop_signal())

    with tempfile.TemporaryDirectory(prefix="tutti-rehearsal-") as scratch:
        folder = outdir or scratch
        try:
            return asyncio.run(main())
        except RuntimeError as e:  # a host that did not come up: everything made is removed already
            print(f"tutti deploy rehearse: {e}", file=sys.stderr)
            return 1


def stop_signal() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(args: argparse.Namespace) -> int:
    from conductor.server.conductor import local

    if is_concert(args.concert):
        concert = load_concert(args.concert)
    else:  # a score on its own: a concert with defaults, its tokens printed
        if args.workers:
            print(f"{args.concert}: web workers need a concert file (see deploy/README.md)", file=sys.stderr)
            return 2
        concert = concert_for_score(args.concert, Path("journals") / f"{Path(args.concert).stem}.jsonl")
    for warning in concert.warnings:
        print(warning, file=sys.stderr)
    hosts = args.host or (["0.0.0.0", "::"] if args.lan else concert.hosts)
    port = concert.settings.port if args.port is None else args.port
    stop = stop_signal()
    if args.workers and args.watch:
        print("tutti serve: --watch is for rehearsal, in one process: leave out --workers", file=sys.stderr)
        return 2
    if args.workers:
        from conductor.server.cluster import Unreachable, start_workers

        try:
            conductor, workers, bound = await start_workers(
                args.concert,
                concert,
                args.redis,
                args.workers,
                hosts,
                port,
                args.fresh,
                skip_bad_journal_lines=args.skip_bad_journal_lines,
            )
        except Unreachable as e:
            print(e, file=sys.stderr)
            return 1
        announce(concert, conductor, hosts, bound)
        print(f"  {args.workers} web workers on {args.redis}", flush=True)
        gc.freeze()  # what was loaded to start lives all concert: full collections need not walk it
        if args.play:
            await play_once(conductor)
        await stop.wait()
        await workers.stop()
        await conductor.stop()
        return 0
    conductor, gateway = local(concert, args.fresh, skip_bad_journal_lines=args.skip_bad_journal_lines)
    osc = concert.settings.osc
    where = f"for OSC on UDP {osc.udp_port}, TCP {osc.tcp_port}" if osc else ""
    fix = "choose others under osc: in the concert file"
    try:
        await conductor.start(hosts[0], watch=args.watch)
        where, fix = f"on {', '.join(hosts)} port {port}", "choose another with --port"
        runner, bound = await gateway.start(hosts, port)
    except OSError as e:
        await conductor.stop()
        why = "in use (another conductor?)" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        print(f"tutti serve: cannot listen {where}: {why}; {fix}", file=sys.stderr)
        return 1
    announce(concert, conductor, hosts, bound)
    gc.freeze()  # what was loaded to start lives all concert: full collections need not walk it
    if args.play:
        await play_once(conductor)
    await stop.wait()
    await gateway.stop(runner)
    await conductor.stop()
    return 0


async def worker(args: argparse.Namespace) -> int:
    from conductor.server.cluster import run_worker

    stop = stop_signal()
    await run_worker(
        load_concert(args.concert), args.redis, args.run, args.name, args.origin, args.host, args.port, stop
    )
    return 0


def announce(concert: Concert, conductor: Conductor, hosts: list[str], port: int) -> None:
    """What to open, at an address the performers' iPads can reach (or a warning that they cannot)."""
    from conductor.server.addresses import is_loopback, lan_addresses, url

    wildcard = any(h in ("::", "0.0.0.0") for h in hosts)
    reachable = lan_addresses() if wildcard else [h for h in hosts if not is_loopback(h)]
    conductor.reachable = reachable
    scheme = "https" if concert.settings.tls else "http"
    local_host = "127.0.0.1" if wildcard else hosts[0]
    base = url(scheme, reachable[0] if reachable else local_host, port)
    print(f"Tutti conductor: {concert.title}")
    if conductor.osc:
        tcp = f", TCP (SLIP) {conductor.osc.tcp_port}" if conductor.osc.tcp_port else ""
        print(f"  OSC on UDP {conductor.osc.udp_port}{tcp}")
    print(f"  listening on {url(scheme, local_host, port)} ({', '.join(hosts)})")
    direct = not is_concert(concert.path)  # a score served as it is: its tokens are made up for this run
    print(f"  console:   {base}/console" + (f"?token={concert.token_for('conductor')}" if direct else ""))
    print(f"  perform:   {base}/perform   (each part's link and QR code: the console's Invite performers)")
    print(f"  audience:  {base}/audience")
    print(f"  compose:   {base}/compose" + (f"?token={concert.token_for('composer')}" if direct else ""))
    if not reachable:
        print("  only this machine can open these: start with --lan (or set host) for iPads and phones to join")
    if direct:
        tokens = ", ".join(f"{role} {concert.token_for(role)}" for role in ("conductor", "performer", "node"))
        print(f"  tokens for this run: {tokens}")
    print(f"  journal: {conductor.journal.path}", flush=True)


async def play_once(conductor: Conductor) -> None:
    """``--play``: start a new performance; a resumed one is left as it was."""
    from conductor.core.protocol import Play

    if conductor.transport.seq == 0:
        await conductor.pipeline.apply(Play(cmd="play"), {"role": "conductor", "name": "tutti serve --play"})


async def replay(path: str, url: str | None, token: str, speed: float) -> int:
    """Re-emit a recorded performance in time: print each change, and send it to a conductor if given."""
    from conductor.client import TuttiClient

    contents = journal.read(Path(path))
    for problem in contents.skipped:
        print(problem, file=sys.stderr)
    client = None
    if url:
        client = TuttiClient(url, "conductor", token, name="replay")
        await client.connect()
    events = _sketch_events(Path(path), contents.header)
    loop = asyncio.get_running_loop()
    start = loop.time()
    where = _score_positions(contents.header)
    first = contents.records[0].accepted if contents.records else 0.0
    try:
        for delay, record in journal.replay_times(contents.records):
            while events and events[0]["accepted"] <= record.accepted:
                event = events.pop(0)
                await asyncio.sleep(max(0.0, start + (event["accepted"] - first) / speed - loop.time()))
                print(_sketch_line(event), flush=True)
            await asyncio.sleep(max(0.0, start + delay / speed - loop.time()))
            command = {k: v for k, v in record.change.command.items() if k != "at"}
            words = " ".join(f"{k}={_plain(v)}" for k, v in command.items() if k != "cmd")
            by = record.by.get("name") or record.by.get("role") or "?"
            print(f"{where(record.change)}  #{record.change.seq:<4} {command['cmd']} {words}  (by {by})", flush=True)
            # A loop's jumps back are the loop's own: the conductor replayed to makes them itself.
            if client and record.by != {"role": "conductor", "name": "loop"}:
                answer = await client.command(**command)
                if not answer.get("ok"):
                    print(f"           refused: {answer.get('message')}", file=sys.stderr)
        for event in events:  # after the last change
            await asyncio.sleep(max(0.0, start + (event["accepted"] - first) / speed - loop.time()))
            print(_sketch_line(event), flush=True)
    finally:
        if client:
            await client.close()
    return 0


def _sketch_events(path: Path, header: dict[str, Any]) -> list[dict[str, Any]]:
    """The sketch events of the performance a journal holds (``JOURNAL.sketch.jsonl``), in order.
    They are shown, not sent again: a conductor-role client cannot send a performer's sketch events."""
    import json

    events = []
    started = header.get("started", 0)
    try:
        lines = journal.sketch_log(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for n, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
            if event["accepted"] >= started:
                events.append(event)
        except (ValueError, KeyError, TypeError):
            print(f"{journal.sketch_log(path)}:{n}: not a sketch event; skipped", file=sys.stderr)
    return sorted(events, key=lambda e: e["accepted"])


def _sketch_line(event: dict[str, Any]) -> str:
    import json

    to = ",".join(event.get("to") or []) or "every part"
    at = f" at {event['at']:g} s" if event.get("at") is not None else ""
    data = json.dumps(event.get("data"), separators=(",", ":"))
    return f"{'':>22}  sketch {event.get('name')} from {event.get('part')} to {to}{at}: {data[:120]}"


def _plain(value: object) -> str:
    """A journalled value as a person wrote it: 0.2, not 0.19999999999999996."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(_plain(v) for v in value)
    return str(value)


def _score_positions(header: dict[str, object]) -> Callable[[Change], str]:
    """Where in the score each change took effect (m:ss.s and bar.beat), from the journal's score;
    the conductor time elapsed if that score cannot be read."""
    from conductor.core.transport import Transport

    try:
        score = load_score(str(header.get("score", ""))).score
    except (InvalidFile, OSError):
        first: list[float] = []

        def elapsed(change: Change) -> str:
            first.append(change.t)
            return f"{change.t - first[0]:9.3f} s"

        return elapsed
    transport = Transport(score)

    def position(change: Change) -> str:
        transport.apply(change)
        pos = transport.position(change.t)
        beats = int(pos * score.tempo.bpm / 60 + 1e-6)
        bar, beat = divmod(beats, score.tempo.beats_per_bar)
        return f"{int(pos // 60)}:{pos % 60:04.1f} (bar {bar + 1}.{beat + 1})"

    return position


def lead(text: str) -> float:
    """``--link-lead``: seconds, from 0 to 2."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 2:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text}: give seconds from 0 to 2 (sclang's latency, 0.2 by default)")
    return value


async def run_node(args: argparse.Namespace) -> int:
    from conductor.core.process import Watchdog
    from conductor.node.agent import NodeAgent
    from conductor.node.scsynth import STUCK, Scsynth, ScsynthUnanswered, end_stuck_jack

    token = args.token or os.environ.get("TUTTI_NODE_TOKEN", "")
    channels = max(2, args.click_out + 2)  # the click's stereo pair on its own outputs
    scsynth = None if args.no_synth else Scsynth(args.port, args.jack_server, f"scsynth-{args.name}", channels=channels)
    agent = NodeAgent(
        args.url, token, args.site, args.name, args.part, scsynth,
        jack_server=args.jack_server, start_jack=not args.no_jack, sclang_port=args.sclang_port, ca=args.ca,
        jacktrip=args.jacktrip, link=args.link, link_lead=args.link_lead, click_out=args.click_out,
        archive=Path(args.archive) if args.archive else None,
    )  # fmt: skip
    gc.freeze()  # what was loaded to start lives as long as the node: a full collection need not walk it
    # JACK calls the node's measuring and recording clients each period (2.7 ms at 128 frames), and
    # they need the GIL: the loop hands it over within half a millisecond, not Python's 5 ms.
    sys.setswitchinterval(GIL_SWITCH)
    stop = stop_signal()
    watchdog = asyncio.create_task(Watchdog().run())
    task = asyncio.create_task(agent.run())
    await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    print(f"node {args.name}: stopping", flush=True)
    task.cancel()
    await agent.close()
    watchdog.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watchdog
    if task.done() and not task.cancelled() and (error := task.exception()):
        if isinstance(error, ScsynthUnanswered):  # one line that says what to do, not a traceback
            # A JACK server of its own unit that no longer runs its clients is ended, for the unit
            # to start it again (this node's own server ended with the node).
            if args.no_jack and await end_stuck_jack(args.jack_server):
                why = (
                    f"its JACK server {args.jack_server} no longer ran its clients: ended it, for its unit to start it"
                )
            else:
                why = STUCK.format(server=args.jack_server, node=args.name)
            print(f"node {args.name}: {error}: {why}", file=sys.stderr)
            return 1
        raise error
    return 0


def synths_command(action: str) -> int:
    from conductor.tools import synths

    try:
        if action == "build":
            names = synths.build()
            print(f"built {len(names)} synths into {synths.SYNTHS}: {', '.join(names)}")
            return 0
        stale = synths.check()
    except synths.BuildError as e:
        print(e, file=sys.stderr)
        return 1
    for problem in stale:
        print(problem, file=sys.stderr)
    if not stale:
        print("the compiled synths are up to date")
    return 1 if stale else 0


def archive_command(args: argparse.Namespace) -> int:
    from conductor.tools import archive

    try:
        if args.action == "collect":
            if not args.source:
                print(
                    "tutti archive collect CONCERT OUT --from DIR ...: give each node's --archive folder",
                    file=sys.stderr,
                )
                return 2
            concert = load_concert(args.concert, resolve_tokens=False)
            index, problems = archive.collect(concert.journal_path, [Path(d) for d in args.source], Path(args.out))
            for problem in problems:
                print(f"{problem}; left out", file=sys.stderr)
            for track in index["tracks"]:
                gaps = ", ".join(f"{g['kind']} {g['seconds']:.3f} s" for g in track["gaps"]) or "no gaps"
                print(f"{track['file']}: {track['frames'] / track['rate']:.1f} s, {gaps}")
            return 0
        for path in archive.mix(Path(args.concert), stems_only=args.stems):
            print(path)
        return 0
    except archive.ArchiveError as e:
        print(e, file=sys.stderr)
        return 1


def replay_archive(args: argparse.Namespace) -> int:
    """``tutti replay ARCHIVE``: the archive's score drawn in step with its sound, in a browser."""
    from conductor.tools import replay
    from conductor.tools.archive import ArchiveError

    if not 0 <= args.port <= 65535:
        print(f"--port {args.port}: give a port from 1 to 65535, or 0 to pick a free one", file=sys.stderr)
        return 2
    try:
        return asyncio.run(replay.serve(Path(args.journal), args.host, args.port, args.score))
    except ArchiveError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:  # the port is taken, or the address is not this machine's
        where = f"{args.host}:{args.port}"
        print(f"tutti replay: cannot serve on {where} ({e.strerror}): give another --port or --host", file=sys.stderr)
        return 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tutti")
    except PackageNotFoundError:
        return "(not installed)"


def _count(text: str) -> int:
    """A count on the command line: a whole number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not a count (0, 1, 2, ...)")
    return int(text)


CA_HELP = "PEM file of the certificate authority to trust for an https:// conductor (a concert's private CA)"


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line that says where to look, rather than the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _between(low: float, high: float, what: str) -> Callable[[str], float]:
    """A number on the command line, finite and within [low, high]; ``what`` says what to give."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not low <= value <= high:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"{text}: give {what}")
        return value

    return parse


_seconds = _between(0, 10, "0 to 10 seconds")
_fraction = _between(0, 1, "a fraction from 0 to 1 (0.01 is 1 %)")
_speed = _between(0.01, 1000, "a speed from 0.01 to 1000")


def _bus(text: str) -> int:
    if not text.isdigit() or int(text) > 62:
        raise argparse.ArgumentTypeError(f"{text!r} is not an output bus from 0 to 62")
    return int(text)


def _host_port(text: str) -> str:
    port = text.rpartition(":")[2]
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not HOST:PORT (for example 127.0.0.1:8080 or [::1]:8080)")
    return text


def command_line() -> argparse.ArgumentParser:
    """The ``tutti`` command's arguments."""
    parser = _Parser(prog="tutti", description="Networked laptop-ensemble performance.")
    parser.add_argument("--version", action="version", version=f"tutti {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every join, change and rejection")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("serve", help="run the conductor for a concert, or for a score as it is")
    p.add_argument("concert", help="concert file (YAML), or a score: served with defaults and printed tokens")
    p.add_argument("--host", action="append", help="address to listen on (repeatable; default from the concert)")
    p.add_argument("--lan", action="store_true", help="listen on every network of this machine, so iPads can join")
    p.add_argument("--port", type=int, help="port (0 picks a free one; default from the concert)")
    p.add_argument("--fresh", action="store_true", help="set an existing journal aside and start a new performance")
    p.add_argument(
        "--skip-bad-journal-lines",
        action="store_true",
        help="resume past journal lines that cannot be read (each is reported), instead of refusing to start",
    )
    p.add_argument("--play", action="store_true", help="start playing at once (unless resuming a performance)")
    p.add_argument(
        "--watch",
        action="store_true",
        help="rehearsal: take edits of the score and its sketches live (see scores/README.md)",
    )
    p.add_argument("--workers", type=_count, default=0, help="serve clients from N web processes (needs --redis)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="with --workers: the Redis server they share")

    # Started by `serve --workers`, never by hand.
    p = sub.add_parser("worker")
    p.add_argument("concert")
    for flag in ("--redis", "--run", "--name"):
        p.add_argument(flag, required=True)
    p.add_argument("--origin", type=float, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", action="append", required=True)

    p = sub.add_parser("check", help="validate scores and concert files")
    p.add_argument("files", nargs="+")

    p = sub.add_parser(
        "replay", help="re-emit a recorded performance from its journal, in time; or watch an archive with its sound"
    )
    p.add_argument("journal", help="a journal, or a concert archive folder (tutti archive collect, then mix)")
    p.add_argument("--url", help="a conductor to send the changes to (as the conductor role)")
    p.add_argument("--token", default="", help="the conductor token for --url")
    p.add_argument("--speed", type=_speed, default=1.0, help="playback speed (2 = twice as fast)")
    p.add_argument("--host", default="127.0.0.1", help="an archive's replay page: the address to serve it on")
    p.add_argument("--port", type=int, default=0, help="an archive's replay page: the port (0 picks a free one)")
    p.add_argument("--score", help="an archive's replay page: the score, if not where the journal says")

    p = sub.add_parser("emulate", help="emulate a site link: a TCP proxy adding delay and jitter")
    p.add_argument("--listen", type=_host_port, default="127.0.0.1:0", help="HOST:PORT to listen on (port 0 picks one)")
    p.add_argument("--to", type=_host_port, required=True, help="HOST:PORT to forward to")
    p.add_argument("--delay", type=_seconds, default=0.0, help="one-way delay, seconds")
    p.add_argument("--jitter", type=_seconds, default=0.0, help="extra uniform random delay up to this, seconds")
    p.add_argument("--loss", type=_fraction, default=0.0, help="fraction of packets lost (TCP: resent after a timeout)")
    p.add_argument("--udp", action="store_true", help="a UDP link (OSC, JackTrip) rather than TCP (Socket.IO)")
    p.add_argument("--seed", type=int, help="random seed, to repeat a run")
    p.add_argument("--delay-back", type=_seconds, help="the answers' one-way delay, seconds (default: --delay)")
    p.add_argument("--jitter-back", type=_seconds, help="the answers' jitter, seconds (default: --jitter)")

    p = sub.add_parser("node", help="run a node agent: a supervised scsynth that plays the conductor's cues")
    p.add_argument("--url", required=True, help="the conductor, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", default="", help="the node token (or set TUTTI_NODE_TOKEN)")
    p.add_argument("--site", help="this node's site")
    p.add_argument("--name", required=True, help="this node's name (cues may target node:NAME)")
    p.add_argument("--part", action="append", default=[], help="a part whose cues this node plays (repeatable)")
    p.add_argument("--port", type=int, default=57110, help="scsynth's UDP port")
    p.add_argument("--sclang-port", type=int, default=57120, help="where cues for the language go (sclang's port)")
    p.add_argument("--jack-server", default="tutti-node", help="JACK server name")
    p.add_argument("--no-jack", action="store_true", help="use a JACK server already running (a real sound card)")
    p.add_argument("--no-synth", action="store_true", help="no scsynth: only this site's audio links (a hub server)")
    p.add_argument("--jacktrip", default="jacktrip", help="the jacktrip program, 1.7 or 2.x (default: jacktrip)")
    p.add_argument(
        "--link", action=argparse.BooleanOptionalAction, default=True,
        help="join this network's Ableton Link session and drive it from the conductor (default: on)",
    )  # fmt: skip
    p.add_argument(
        "--link-lead", type=lead, default=0.2, metavar="SECONDS",
        help="commit tempo and phase changes to Link this early: sclang's latency (default 0.2)",
    )  # fmt: skip
    p.add_argument(
        "--click-out", type=_bus, default=0, metavar="BUS",
        help="scsynth output bus of the click track and count-in, a stereo pair (default 0: the main out); "
        "e.g. 2 for headphones on outputs 3 and 4",
    )  # fmt: skip
    p.add_argument(
        "--archive", metavar="DIR",
        help="record this node's scsynth and what its JackTrip links receive into DIR (WAV, 24 bit), with a clock map",
    )  # fmt: skip
    p.add_argument("--ca", help=CA_HELP)

    p = sub.add_parser("archive", help="gather the nodes' recordings with the journal, or mix them on conductor time")
    p.add_argument("action", choices=["collect", "mix"])
    p.add_argument("concert", help="collect: the concert file (its journal); mix: the collected archive folder")
    p.add_argument("out", nargs="?", default="archive", help="collect: the folder to gather into (default: archive)")
    p.add_argument("--from", dest="source", action="append", default=[], metavar="DIR",
                   help="collect: a node's --archive folder (repeatable; its name names the node)")  # fmt: skip
    p.add_argument("--stems", action="store_true", help="mix: a stem per track only, no multitrack file")

    p = sub.add_parser("synths", help="build the SuperCollider synths with sclang, or check they are up to date")
    p.add_argument("action", choices=["build", "check"])

    p = sub.add_parser(
        "deploy",
        help="a concert across sites: what runs where (plan), each machine's files (render), all of it on this"
        " machine in network namespaces (rehearse), go or no-go on a concert machine (check)",
    )
    p.add_argument("action", choices=["plan", "render", "rehearse", "check"])
    p.add_argument("concert", help="the concert file (with a deployment section)")
    p.add_argument("outdir", nargs="?", help="render: the folder to write one folder per machine into (rehearse: kept)")
    p.add_argument("--ca", help="check: the concert's CA certificate (default /etc/tutti/ca.pem or deployment.ca)")
    p.add_argument("--host", action="append", help="check: the deployment host to check (default: this machine's)")
    p.add_argument("--rehearsal", help="check: inside `tutti deploy rehearse` with this tag (its JACK names)")
    p.add_argument("--tag", help="rehearse: the prefix of its namespaces and JACK servers (default: t-PID)")

    p = sub.add_parser("status", help="the console in a terminal: transport, clients, nodes, links, late cues")
    p.add_argument("--url", required=True, help="the conductor, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", default="", help="the conductor token (or set TUTTI_CONDUCTOR_TOKEN)")
    p.add_argument("--once", action="store_true", help="draw once and exit")
    p.add_argument("--output", help="with --once: write to this file rather than the terminal")
    p.add_argument("--ca", help=CA_HELP)

    return parser


def run(program: Coroutine[Any, Any, T]) -> T:
    """Run a program on uvloop where it is installed: each wake-up of a relay, a cue or an
    acknowledgement costs about half what it does on asyncio's own loop (``bench/relay.py``)."""
    try:
        import uvloop
    except ImportError:  # not on Windows
        return asyncio.run(program)
    return uvloop.run(program)


def main(argv: list[str] | None = None) -> int:
    args = command_line().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not args.verbose and args.command in ("status", "replay"):  # their refusals are said once, below
        logging.getLogger("tutti.client").setLevel(logging.ERROR)
    try:
        if args.command == "check":
            return check(args.files)
        if args.command == "serve":
            return run(serve(args))
        if args.command == "worker":
            return run(worker(args))
        if args.command == "replay" and Path(args.journal).is_dir():
            return replay_archive(args)
        if args.command == "replay":
            return asyncio.run(replay(args.journal, args.url, args.token, args.speed))
        if args.command == "node":
            return run(run_node(args))
        if args.command == "synths":
            return synths_command(args.action)
        if args.command == "deploy":
            from conductor.tools import deploy

            concert = load_concert(args.concert, resolve_tokens=False)
            if concert.settings.deployment is None:
                print(f"{args.concert}: no 'deployment' section: nothing says which machine runs what", file=sys.stderr)
                return 1
            if args.action == "plan":
                print(deploy.describe(deploy.plan(concert)))
                return 0
            if args.action == "check":
                from conductor.tools import check as preflight

                return asyncio.run(preflight.run(concert, args.ca, args.rehearsal, args.host))
            if args.action == "rehearse":
                return rehearse(concert, args.outdir, args.tag or f"t-{os.getpid()}")
            if not args.outdir:
                print("tutti deploy render CONCERT OUTDIR: say where to write", file=sys.stderr)
                return 2
            for path in deploy.render(concert, Path(args.outdir)):
                print(path)
            return 0
        if args.command == "status":
            from conductor.tools import status

            token = args.token or os.environ.get("TUTTI_CONDUCTOR_TOKEN", "")
            return asyncio.run(status.run(args.url, token, args.once, args.output, args.ca))
        if args.command == "archive":
            return archive_command(args)
        if args.command == "emulate":
            from conductor.tools import emulate

            there = (args.delay, args.jitter, args.loss, args.udp, args.seed)
            asyncio.run(emulate.run(args.listen, args.to, *there, args.delay_back, args.jitter_back))
    except (InvalidFile, journal.JournalError) as e:
        print(e, file=sys.stderr)
        return 1
    except BrokenPipeError:  # what reads the output left (``| head``): the end, said by nobody
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or Python complains at exit
        return 0
    except ConnectionError as e:  # the conductor refused or could not be reached
        advice = (
            "give the conductor token with --token or TUTTI_CONDUCTOR_TOKEN"
            if "bad_token" in str(e)
            else "check the --url and that the conductor is running"
        )
        print(f"tutti {args.command}: {str(e).removeprefix('bad_token: ')}: {advice}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
