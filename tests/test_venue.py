"""An open venue network: what an audience phone, a stray packet or a hostile file can do, and cannot.

One test per finding of issue 15, each against a real conductor (and a real node agent where
one is concerned), talking Socket.IO and Engine.IO on the wire where a well-behaved client
library would not send what an attacker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conductor.client import TuttiClient, why_unreachable
from conductor.core.osc import osc_message
from conductor.server.cluster import free_port
from conductor.server.connections import PENDING_PER_ADDRESS
from conductor.server.joins import JOIN_FAILURES, ROLE_FAILURES
from conductor.server.osc import TCP_PER_ADDRESS
from tests.conftest import ROOT, SCORES, TOKENS, ConductorProcess, write_concert
from tests.test_tls import test_certificate

pytestmark = pytest.mark.integration


async def until(condition: Callable[[], Any], within: float = 10.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + within
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)
    return result


class Raw:
    """A Socket.IO client on the wire (Engine.IO 4 over a WebSocket), that sends whatever it is told."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession):
        self.ws, self.session = ws, session
        self.events: list[tuple[str, Any]] = []
        self.acks: dict[int, Any] = {}
        self.welcome: dict[str, Any] | None = None
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def join(cls, url: str, auth: dict[str, Any], origin: str | None = None, local: str | None = None) -> Raw:
        connector = aiohttp.TCPConnector(local_addr=(local, 0) if local else None)
        session = aiohttp.ClientSession(connector=connector)
        headers = {"Origin": origin} if origin else {}
        try:
            ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket", headers=headers)
        except BaseException:
            await session.close()
            raise
        raw = cls(ws, session)
        await raw.send("40" + json.dumps(auth))
        await until(lambda: raw.welcome is not None or raw.error("connect"), 10)
        return raw

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            data = frame.data
            if data == "2":
                await self.ws.send_str("3")
            elif data.startswith("42"):
                event, *args = json.loads(data[2:])
                self.events.append((event, args[0] if args else None))
                if event == "welcome":
                    self.welcome = args[0]
            elif data.startswith("43"):
                digits = len(data[2:]) - len(data[2:].lstrip("0123456789"))
                self.acks[int(data[2 : 2 + digits])] = json.loads(data[2 + digits :])[0]

    def error(self, event: str) -> dict[str, Any] | None:
        return next((e for name, e in self.events if name == "error" and e.get("event") == event), None)

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def call(self, packet: str, ack: int) -> Any:
        """Send ``42<ack>[...]`` as given; the acknowledgement's payload."""
        await self.send(f"42{ack}{packet}")
        return await until(lambda: self.acks.get(ack), 5)

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        await self.ws.close()
        await self.session.close()


def status(conductor: ConductorProcess) -> dict[str, Any]:
    return conductor.status()


# --- 1. one audience phone must not delay the performance ----------------------------------------


async def test_the_lookahead_follows_only_nodes_and_performers_within_its_bound(tmp_path: Path) -> None:
    conductor = ConductorProcess(write_concert(tmp_path, lookahead=0.05, max_lookahead=0.3))
    clients = []
    try:
        phone = TuttiClient(conductor.url, "audience", name="dup")
        other = TuttiClient(conductor.url, "performer", TOKENS["performer"], part="drones", name="dup")
        slow = TuttiClient(conductor.url, "performer", TOKENS["performer"], part="pulses", name="slow")
        boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
        clients = [phone, other, slow, boss]
        for c in clients:
            await c.connect()
        names = [c["name"] for c in status(conductor)["clients"]]
        assert len(set(names)) == len(names) and "dup" in names and "dup-2" in names  # names are unique
        assert all("sid" not in c for c in status(conductor)["clients"])

        await phone.sio.emit("report", {"rtt": 0, "offset": 0, "error": 0, "delay": 60})
        await asyncio.sleep(0.6)  # two lookahead updates: the audience's delay must change nothing
        assert status(conductor)["lookahead"]["value"] == pytest.approx(0.05)
        answer = await boss.command("tempo", bpm=90)
        assert answer["ok"] and answer["t"] - boss.now() < 0.3, answer

        await slow.sio.emit("report", {"rtt": 0, "offset": 0, "error": 0, "delay": 60})  # a performer, past the bound
        lookahead = await until(lambda: "slow" in (la := status(conductor)["lookahead"])["ignored"] and la)
        assert lookahead["value"] <= 0.3
        await slow.sio.emit("report", {"rtt": 0, "offset": 0, "error": 0, "delay": 0.2})  # slow, but in bounds
        await until(lambda: status(conductor)["lookahead"]["worst"] == "slow")
        await slow.close()  # a destination that leaves stops counting at once
        await until(lambda: status(conductor)["lookahead"]["value"] == pytest.approx(0.05), 2)
    finally:
        for c in clients:
            await c.close()
        conductor.stop()


# --- 2. no Infinity in, none out -----------------------------------------------------------------


async def test_infinite_numbers_are_refused_and_never_reach_a_page(tmp_path: Path) -> None:
    conductor = ConductorProcess(write_concert(tmp_path))
    try:
        boss = await Raw.join(conductor.url, {"role": "conductor", "token": TOKENS["conductor"]})
        node = await Raw.join(conductor.url, {"role": "node", "token": TOKENS["node"], "name": "n1", "synth": False})
        await boss.send('421["command",{"cmd":"play","at":1e999}]')
        await boss.send('422["command",{"cmd":"param","name":"brightness","value":-1e400}]')
        await boss.send('423["sync",1e999]')
        await node.send('42["health",{"up":true,"late":0,"cues":0,"cpu_avg":1e999}]')
        await node.send('42["health",{"up":true,"late":0,"cues":0,"cpu_avg":NaN}]')
        await until(lambda: status(conductor)["rejections"].get("malformed", 0) >= 5)
        assert not boss.acks  # nothing acknowledged: no ``t: Infinity``
        # And every page still gets a welcome it can parse, also after a restart.
        conductor.stop()
        conductor.start()
        page = await Raw.join(conductor.url, {"role": "audience"})
        assert page.welcome is not None and page.welcome["state"]["seq"] == 0
        for raw in (boss, node, page):
            await raw.close()
        journal = (tmp_path / "journal.jsonl").read_text()
        assert "Infinity" not in journal and "NaN" not in journal
    finally:
        log = conductor.stop()
    assert "Traceback" not in log


# --- 3. event names outside the protocol ----------------------------------------------------------


async def test_reserved_and_unknown_event_names_are_refused_and_counted(tmp_path: Path) -> None:
    conductor = ConductorProcess(write_concert(tmp_path))
    try:
        victim = TuttiClient(conductor.url, "performer", TOKENS["performer"], part="drones")
        await victim.connect()
        attacker = await Raw.join(conductor.url, {"role": "audience"})
        victim_sid = victim.sio.get_sid()
        for packet in ['["*",{"a":1}]', f'["*","{victim_sid}"]', '["connect",{}]', '["disconnect"]', "[{}]", "[7]"]:
            await attacker.send("42" + packet)
        answer = await attacker.call('["*","x"]', 9)
        assert answer["ok"] is False and answer["code"] == "unknown_event"
        counted = await until(
            lambda: status(conductor)["rejections"].get("unknown_event", 0) >= 7 and status(conductor)
        )
        assert counted["rejections"]["unknown_event"] == 7
        await asyncio.sleep(0.3)  # what the victim would have been sent had the name reached a handler
        assert victim.errors == []
        await victim.close()
        await attacker.close()
    finally:
        log = conductor.stop()
    assert "Traceback" not in log and "unhashable" not in log


# --- 4. origins ------------------------------------------------------------------------------------


async def _polling_status(url: str, origin: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/socket.io/?EIO=4&transport=polling", headers={"Origin": origin}) as r,
    ):
        return r.status


@pytest.mark.parametrize("cors", [[], ["https://openprocessing.org"]])
async def test_own_origin_and_cors_origins_are_allowed_and_no_other(tmp_path: Path, cors: list[str]) -> None:
    conductor = ConductorProcess(write_concert(tmp_path, cors_origins=cors))
    try:
        own = await Raw.join(conductor.url, {"role": "audience"}, origin=conductor.url)
        assert own.welcome is not None  # the conductor's own pages
        await own.close()
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await Raw.join(conductor.url, {"role": "audience"}, origin="http://evil.example")
        assert await _polling_status(conductor.url, "http://evil.example") == 400
        assert await _polling_status(conductor.url, conductor.url) == 200
        if cors:
            sketch = await Raw.join(conductor.url, {"role": "audience"}, origin=cors[0])
            assert sketch.welcome is not None
            await sketch.close()
        await until(lambda: status(conductor)["rejections"].get("bad_origin") == 2)  # each refusal, once
    finally:
        conductor.stop()


# --- 5. exhaustion -----------------------------------------------------------------------------------


async def test_slow_and_idle_connections_cannot_keep_joins_out(tmp_path: Path) -> None:
    routes = [{"address": "/fader", "param": "brightness"}]
    conductor = ConductorProcess(write_concert(tmp_path, osc={"udp_port": 0, "tcp_port": 0, "routes": routes}))
    held: list[socket.socket] = []
    try:
        host, port = "127.0.0.1", int(conductor.url.rsplit(":", 1)[1])
        for _ in range(PENDING_PER_ADDRESS * 3):  # headers a byte at a time, never finished
            s = socket.create_connection((host, port))
            s.sendall(b"G")
            held.append(s)
        osc = [socket.create_connection((host, conductor.osc_tcp)) for _ in range(TCP_PER_ADDRESS + 20)]
        held += osc
        for _ in range(3):
            page = TuttiClient(conductor.url, "audience")
            await page.connect()  # joins go on
            await page.close()
        # The oldest slow connections were closed to make room, and the OSC ones past the cap at once.
        slow = held[: PENDING_PER_ADDRESS * 2]
        await until(lambda: sum(_closed(s) for s in slow) >= PENDING_PER_ADDRESS)
        assert await until(lambda: sum(_closed(s) for s in osc) >= 20)
        rejections = status(conductor)["rejections"]
        assert rejections["slow_headers"] >= PENDING_PER_ADDRESS and rejections["osc_too_many"] >= 20

        # Spoofable UDP sources: each well-formed packet may not buy a place in the echo list.
        packet = osc_message("/fader", [0.5])
        senders = []
        for _ in range(300):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.sendto(packet, (host, conductor.osc_udp))
            senders.append(u)
        await until(lambda: status(conductor)["state"]["seq"] >= 100)
        assert status(conductor)["osc_echo_peers"] <= 64
        for u in senders:
            u.close()
    finally:
        for s in held:
            s.close()
        conductor.stop()


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_rendered_units_raise_the_open_file_limit() -> None:
    from conductor.tools.deploy import _unit

    assert "LimitNOFILE=65536" in _unit("x", "tutti serve x", "env")


# --- 6. lock-out, and clients that never give up ---------------------------------------------------


async def test_join_limiting_never_refuses_a_right_token_and_limits_guesses_per_role(tmp_path: Path) -> None:
    conductor = ConductorProcess(write_concert(tmp_path))
    try:
        for _ in range(JOIN_FAILURES + 5):  # a venue's NAT: malformed joins and wrong guesses from one address
            for auth in ({"role": "conductor", "token": "guess"}, {"role": "wizard"}):
                with contextlib.suppress(Exception):
                    await (await Raw.join(conductor.url, auth)).close()
        console = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
        await console.connect()  # the real console gets in
        await console.close()
        # Guesses spread over many addresses are limited per role.
        codes = []
        for i in range(ROLE_FAILURES + 5):
            raw = await Raw.join(conductor.url, {"role": "node", "token": "guess"}, local=f"127.0.{i // 200}.{2 + i}")
            codes.append((raw.error("connect") or {}).get("code"))
            await raw.close()
        assert codes[0] == "bad_token" and codes[-1] == "rate_limited", codes
        node = TuttiClient(conductor.url, "node", TOKENS["node"], name="n", synth=False)
        await node.connect()  # still: a right token gets in
        await node.close()
    finally:
        conductor.stop()


async def test_a_node_agent_waits_for_the_conductor_and_keeps_trying_after_a_refusal(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    node = subprocess.Popen(  # noqa: ASYNC220 (started once, read at the end)
        [sys.executable, "-m", "conductor", "node", "--url", url, "--token", "new-node-token", "--name", "late",
         "--no-synth", "--no-jack"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    conductor = None
    try:
        await asyncio.sleep(1.5)  # no conductor yet: the agent must keep trying, not exit
        assert node.poll() is None
        conductor = ConductorProcess(write_concert(tmp_path, port=port))  # the node token is still the old one
        await until(lambda: conductor.status()["rejections"].get("bad_token", 0) >= 2, 20)  # refused, tried again
        assert node.poll() is None
        conductor.stop()
        conductor = ConductorProcess(write_concert(tmp_path, port=port, tokens={**TOKENS, "node": "new-node-token"}))
        await until(lambda: "late" in [c["name"] for c in conductor.status()["clients"]], 20)
    finally:
        node.terminate()
        output = node.communicate(timeout=10)[0]
        if conductor:
            conductor.stop()
    assert "Traceback" not in output and "trying again" in output and "wrong token" in output, output


async def test_certificate_and_scheme_failures_name_their_cause(tmp_path: Path) -> None:
    tls = test_certificate(tmp_path)
    secure = ConductorProcess(write_concert(tmp_path, tls=tls, host=["127.0.0.1", "127.0.0.2"]))
    (tmp_path / "plain").mkdir()
    plain = ConductorProcess(write_concert(tmp_path / "plain"))
    try:
        assert "unknown authority" in await why_unreachable(secure.url)
        context = ssl.create_default_context(cafile=tls["cert"])
        other_name = secure.url.replace("127.0.0.1", "127.0.0.2")  # the certificate names 127.0.0.1 and localhost
        assert "name mismatch" in await why_unreachable(other_name, context)
        assert "use https://" in await why_unreachable(secure.url.replace("https:", "http:"))
        assert "plain HTTP" in await why_unreachable(plain.url.replace("http:", "https:"))
        client = TuttiClient(secure.url, "audience")
        with pytest.raises(ConnectionError, match="unknown authority"):
            await client._join_once()
        await client.sio.disconnect()
    finally:
        secure.stop()
        plain.stop()


# --- 7. the journal at start -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda lines: [*lines[:2], b"\xff\xfe not utf-8", *lines[2:]], "utf-8"),
        (lambda lines: [*lines[:-1], lines[-1].replace(b'"seq":3', b'"seq":"bad"')], "seq"),
        (lambda lines: [*lines[:-1], lines[-1].replace(b'"seq":3', b'"seq":1')], "does not follow"),
    ],
)
def test_a_damaged_journal_refuses_to_start_with_its_line(
    tmp_path: Path, damage: Callable[[list[bytes]], list[bytes]], what: str
) -> None:
    concert = write_concert(tmp_path)
    conductor = ConductorProcess(concert)
    asyncio.run(_three_changes(conductor.url))
    conductor.stop()
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"\n".join(damage(path.read_bytes().splitlines())) + b"\n")
    run = subprocess.run(
        [sys.executable, "-m", "conductor", "serve", str(concert)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and f"{path}:" in run.stderr and what in run.stderr.lower(), run.stderr
    resumed = ConductorProcess(concert, "--skip-bad-journal-lines")
    assert resumed.status()["state"]["seq"] >= 2
    resumed.stop()


async def _three_changes(url: str) -> None:
    boss = TuttiClient(url, "conductor", TOKENS["conductor"])
    await boss.connect()
    for bpm in (70, 80, 90):
        assert (await boss.command("tempo", bpm=bpm))["ok"]
    await boss.close()


# --- 8. hostile scores ---------------------------------------------------------------------------------

LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
HOSTILE = {
    "laughs.yaml": LAUGHS,
    "deep.yaml": "parts: " + "[" * 500 + "]" * 500 + "\n",
    "wide.yaml": "a: &a [1,1,1,1,1,1,1,1]\n"
    + "".join(f"{b}: &{b} [*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a}]\n" for a, b in zip("abcde", "bcdef", strict=True)),
    "cycle.yaml": "a: &a [*a]\n",
    "huge.yaml": (SCORES / "demo.yaml").read_text() + "#" * 1_100_000 + "\n",  # valid, but too large
}
WHAT = {
    "laughs.yaml": "aliases are expanded",
    "deep.yaml": "nested more than",
    "wide.yaml": "aliases are expanded",
    "cycle.yaml": "refers to the value that holds it",
    "huge.yaml": "larger than 1,000,000 bytes",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_scores_are_refused_at_once_with_their_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(HOSTILE[name])
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "conductor", "check", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    took = time.monotonic() - start
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith(f"{path}:") and WHAT[name] in run.stderr.splitlines()[0], run.stderr
    assert took < 5, f"{took:.1f} s (the interpreter's start included)"
    concert = write_concert(tmp_path, score=path)
    serve = subprocess.run(
        [sys.executable, "-m", "conductor", "serve", str(concert)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert serve.returncode == 1 and "Traceback" not in serve.stderr and f"{path}:" in serve.stderr


# --- 9. web workers and long-polling -----------------------------------------------------------------


async def test_workers_refuse_long_polling_with_the_reason_and_serve_websockets(tmp_path: Path, redis_url: str) -> None:
    conductor = ConductorProcess(write_concert(tmp_path), "--workers", "2", "--redis", redis_url)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(4):  # whichever worker the kernel picks
                async with session.get(f"{conductor.url}/socket.io/?EIO=4&transport=polling") as r:
                    assert r.status == 400 and "WebSocket transport" in await r.text()
        for _ in range(6):
            page = TuttiClient(conductor.url, "audience")
            await page.connect()
            await page.close()
    finally:
        log = conductor.stop()
    assert "Cannot write to closing transport" not in log and "Traceback" not in log
    example = (ROOT / "clients" / "examples" / "plain-socketio.html").read_text()
    assert 'transports: ["websocket"]' in example


def test_scores_in_the_repository_are_within_the_limits() -> None:
    for path in SCORES.glob("*.yaml"):
        run = subprocess.run([sys.executable, "-m", "conductor", "check", str(path)], cwd=ROOT, capture_output=True)
        assert run.returncode == 0, run.stderr
