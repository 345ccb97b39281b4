"""A bad-input campaign with hypothesis: scores, concert files, OSC packets and Socket.IO events.

Every input is either accepted or refused with an explanation (``file:line: field: message`` for
files, a counted code and message for messages); none escapes as an unexpected exception, and the
conductor keeps serving the clients that behave.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from conductor.core import protocol
from conductor.core.concert import load_concert
from conductor.core.score import load_score
from conductor.core.yamlcheck import InvalidFile
from conductor.server.osc import MAX_PACKET, OscIngress, OscSettings
from tests.conftest import SCORES, TOKENS, ConductorProcess, write_concert

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _json_values(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | floats | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


json_values = _json_values(st.floats())
# A Socket.IO packet with NaN or an infinity is refused whole, before any event sees it (so it gets
# no answer): tests/test_venue.py covers that. Here every packet decodes and every event answers.
finite_json_values = _json_values(st.floats(allow_nan=False, allow_infinity=False))

# --- files: a valid document, then changed in one place -----------------------------------------

DEMO = yaml.safe_load((SCORES / "demo.yaml").read_text())


def _paths(data: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield here
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*here, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, (*here, i))


@st.composite
def mutated(draw: st.DrawFn, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with one value replaced by anything, or one key removed or added."""
    data = copy.deepcopy(document)
    path = draw(st.sampled_from(list(_paths(data))[1:]))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(json_values)
    elif action == "remove":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    else:
        parent.append(draw(json_values))
    return data


def _explained(error: InvalidFile, path: Path) -> None:
    assert error.problems, "refused without a reason"
    for problem in error.problems:
        assert problem.file == str(path) and problem.line >= 1 and problem.message


@FUZZ
@given(score=mutated(DEMO))
def test_a_changed_score_loads_or_is_refused_with_file_line_and_field(score: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "score.yaml"
    if not (tmp_path / "sketches").exists():
        shutil.copytree(SCORES / "sketches", tmp_path / "sketches")
    path.write_text(yaml.safe_dump(score, allow_unicode=True))
    try:
        load_score(path)
    except InvalidFile as e:
        _explained(e, path)


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_as_a_score_is_refused_with_a_reason(text: str, tmp_path: Path) -> None:
    path = tmp_path / "score.yaml"
    path.write_text(text)
    with pytest.raises(InvalidFile) as e:
        load_score(path)
    _explained(e.value, path)


CONCERT = {
    "score": str(SCORES / "demo.yaml"),
    "host": "127.0.0.1",
    "port": 8080,
    "journal": "journal.jsonl",
    "tokens": dict(TOKENS),
    "osc": {"udp_port": 9000, "routes": [{"address": "/1/fader1", "param": "density"}]},
    "audio": {
        "hub": {"site": "ucas", "address": "::1", "port": 4464},
        "links": [{"site": "ccom", "bind_port": 4465}],
    },
}


@FUZZ
@given(concert=mutated(CONCERT))
def test_a_changed_concert_file_loads_or_is_refused_with_file_line_and_field(
    concert: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "concert.yaml"
    path.write_text(yaml.safe_dump(concert, allow_unicode=True))
    try:
        load_concert(path)
    except InvalidFile as e:
        _explained(e, path)


# --- OSC: every packet is routed or refused, once --------------------------------------------------


def _osc(address: str, args: list[Any]) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


osc_strings = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10
)  # python-osc cannot build a NUL
osc_args = st.lists(st.integers(-(2**31), 2**31 - 1) | st.floats(width=32) | osc_strings | st.booleans(), max_size=4)
osc_packets = (
    st.binary(max_size=300)
    | st.builds(_osc, st.sampled_from(["/1/fader1", "/nope", "/1/fader1/z"]), osc_args)
    | st.builds(lambda p, n: p[:n], st.builds(_osc, st.just("/1/fader1"), osc_args), st.integers(0, 40))
    | st.builds(lambda body: b"#bundle\x00" + body, st.binary(max_size=64))
    | st.builds(lambda n: b"/" * n, st.sampled_from([MAX_PACKET, MAX_PACKET + 4]))
)


@FUZZ
@given(packet=osc_packets)
def test_every_osc_packet_is_routed_or_refused_with_a_reason(packet: bytes) -> None:
    applied: list[Any] = []
    refused: list[tuple[str, str]] = []

    def submit(command: Any, by: dict[str, Any], coalesced: int) -> asyncio.Future[None]:
        applied.append(command)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    settings_ = OscSettings.model_validate({"routes": [{"address": "/1/fader1", "param": "density"}]})
    ingress = OscIngress(settings_, {"density": (0.0, 1.0)}, submit, lambda code, why: refused.append((code, why)))

    async def receive() -> None:
        ingress.receive(packet, ("127.0.0.1", 9999))

    asyncio.run(receive())
    if not (applied or refused):  # nothing to route: only an empty bundle, which OSC allows
        assert OscPacket(packet).messages == [], "a packet vanished without a trace"
    assert all(code.startswith("osc_") and why for code, why in refused)
    assert "osc_refused" not in {code for code, _ in refused}, refused  # an internal error, not a refusal
    assert all(0.0 <= c.value <= 1.0 for c in applied)


def as_read(value: Any) -> Any:
    """``value`` as a browser would read it back: an integer beyond 64 bits is a double."""
    if isinstance(value, bool) or not isinstance(value, int | list | dict):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else float(value)
    if isinstance(value, list):
        return [as_read(v) for v in value]
    return {k: as_read(v) for k, v in value.items()}


any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)  # lone surrogates too


@FUZZ
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
))  # fmt: skip
def test_socket_io_messages_read_back_what_was_written(value: Any) -> None:
    # Written by the conductor, or by any peer (a browser, python-socketio: the standard library).
    for text in (protocol.FiniteJson.dumps(value, separators=(",", ":")), json.dumps(value)):
        assert protocol.FiniteJson.loads(text) == as_read(value)


def test_socket_io_messages_have_no_nan_nor_infinity() -> None:
    for text in ("NaN", "[1, Infinity]", "-Infinity", "1e999", '{"a": -1e400}', "1" * 400):
        with pytest.raises(ValueError):
            protocol.FiniteJson.loads(text)
    assert protocol.FiniteJson.dumps([float("nan"), float("inf")]) == "[null,null]"  # a browser reads that


# --- Socket.IO: every event is answered, refusals counted, and the conductor serves on ------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConductorProcess]:
    proc = ConductorProcess(write_concert(tmp_path_factory.mktemp("fuzz")))
    yield proc
    proc.stop()


events = st.sampled_from([protocol.SYNC, protocol.COMMAND, protocol.REPORT, protocol.CONTROL, protocol.HEALTH,
                          protocol.INVITE, protocol.SOUND]) | st.text(min_size=1, max_size=12)  # fmt: skip


def test_every_socketio_event_is_answered_and_refusals_are_counted(live: ConductorProcess) -> None:
    loop = asyncio.new_event_loop()  # hypothesis drives each example; the clients live in this loop
    run = loop.run_until_complete

    async def join(role: str, **extra: Any) -> socketio.AsyncClient:
        client = socketio.AsyncClient()
        auth = {"role": role, "token": TOKENS.get(role, ""), **extra}
        await client.connect(live.url, auth=auth, transports=["websocket"], wait_timeout=10)
        return client

    roles: list[tuple[str, dict[str, Any]]] = [("audience", {}), ("performer", {"part": "drones"}), ("node", {}),
                                               ("conductor", {})]  # fmt: skip
    clients = [run(join(role, **extra)) for role, extra in roles]
    bystander = run(join("audience"))
    counted = [sum(live.status()["rejections"].values())]

    async def ask(who: int, event: str, payload: Any) -> Any:
        """The answer; a client let go for sending refused events too fast (flooding) joins again."""
        for _ in range(2):
            if not clients[who].connected:
                clients[who] = await join(roles[who][0], **roles[who][1])
            try:
                return await clients[who].call(event, payload, timeout=5)
            except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
                await asyncio.sleep(0.5)  # being let go: it will join again
                await clients[who].disconnect()
        raise AssertionError(f"no answer to {event}")

    @FUZZ
    @given(who=st.integers(0, len(clients) - 1), event=events, payload=finite_json_values)
    def send(who: int, event: str, payload: Any) -> None:
        if event == protocol.COMMAND and isinstance(payload, dict) and payload.get("cmd") == "stop":
            return  # a valid stop is fine but would end the piece for everyone else
        answer = run(ask(who, event, payload))
        refusal = protocol.refusal(answer)
        if refusal is not None:
            assert refusal["code"] and refusal["message"], answer
            counted[0] += 1
        else:
            assert answer is None or isinstance(answer, dict | list), answer
        assert run(bystander.call(protocol.SYNC, 1.0, timeout=5))[0] == 1.0  # everyone else is served

    try:
        send()
        rejections = live.status()["rejections"]
        rejections.pop("flooding", None)  # letting a client go is counted too, besides its refusals
        assert sum(rejections.values()) == counted[0]  # each refusal counted, once
        assert "internal" not in live.status()["rejections"]
    finally:
        for client in [*clients, bystander]:
            run(client.disconnect())
        loop.close()
