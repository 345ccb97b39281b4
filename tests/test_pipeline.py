"""The change pipeline in process: the core's changes and cues, and the order its outputs see them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conductor.client import TuttiClient
from conductor.core import journal
from conductor.core.performance import Performance, Timing
from conductor.core.protocol import ControlInput, Rejected, SetParam, command_adapter
from conductor.core.score import PART_GROUP_BASE, load_score
from conductor.core.transport import Transport
from conductor.server.broadcast import AUDIENCE_FRAME, StateBroadcast
from conductor.server.pipeline import Pipeline
from tests.conftest import SCORES, TOKENS, ConductorProcess, write_concert
from tests.test_node import until

T0 = 1_800_000_000.0


class Recorder:
    """An ``Out`` that keeps what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, str | None]] = []

    async def emit(self, event: str, data: Any, to: str | None = None, room: str | None = None) -> None:
        self.sent.append((event, data, to or room))

    async def enter_room(self, sid: str, room: str) -> None:
        pass


@pytest.fixture
def core() -> Performance:
    return Performance(load_score(SCORES / "demo.yaml").score)


def timing(now: float = T0) -> Timing:
    return Timing(now, 0.2, sent_until=now + 0.1)


def test_a_parameter_change_comes_with_its_cues_for_each_part_a_lookahead_ahead(core: Performance) -> None:
    accepted = core.accept(SetParam(cmd="param", name="density", value=1.0), timing())
    assert accepted.change.params == {"density": 1.0} and accepted.change.t == pytest.approx(T0 + 0.2)
    [routed] = accepted.cues  # density sounds in the drones part only, scaled to its n_set range
    assert routed.room == "nodes:part:drones"
    assert routed.cue.t == accepted.change.t and routed.cue.args == [PART_GROUP_BASE, "amp", 0.4]
    assert core.transport.params["density"].at(T0 + 1) == 1.0


def test_the_transport_waits_for_link_sessions_and_parameter_values_do_not(core: Performance) -> None:
    link = Timing(T0, 0.05, transport=0.25)  # a node commits transport changes to Link 0.2 s ahead
    assert core.accept(command_adapter.validate_python({"cmd": "play"}), link).change.t == pytest.approx(T0 + 0.25)
    value = core.accept(SetParam(cmd="param", name="density", value=1.0), link)
    assert value.change.t == pytest.approx(T0 + 0.05)


def test_a_change_never_overtakes_cues_already_sent(core: Performance) -> None:
    accepted = core.accept(command_adapter.validate_python({"cmd": "play"}), Timing(T0, 0.0, sent_until=T0 + 5))
    assert accepted.change.t == T0 + 5


def test_an_xy_pad_is_one_change_of_two_parameters(core: Performance) -> None:
    command = core.control("sketch", ControlInput(id="swell", value=(0.25, 0.75)))
    assert command is not None
    accepted = core.accept(command, timing())
    assert accepted.change.params == {"swell_x": 0.25, "swell_y": 0.75}
    assert core.transport.seq == 1


def test_a_control_out_of_range_or_of_another_part_is_refused(core: Performance) -> None:
    with pytest.raises(Rejected, match="fader 'level' takes 0 to 1"):
        core.control("drones", ControlInput(id="level", value=2))
    with pytest.raises(Rejected, match="no control 'swell'"):
        core.control("drones", ControlInput(id="swell", value=(0.1, 0.1)))


async def test_state_messages_coalesce_per_parameter_per_frame_and_keep_the_order() -> None:
    out = Recorder()
    broadcast = StateBroadcast(out)
    core = Performance(load_score(SCORES / "demo.yaml").score)
    for i in range(100):  # a fader flung within one frame
        broadcast.durable(core.accept(SetParam(cmd="param", name="density", value=i / 100), timing()))
    play = core.accept(command_adapter.validate_python({"cmd": "play"}), timing())
    broadcast.durable(play)  # the transport goes at once, after the parameter's latest value
    broadcast.durable(core.accept(SetParam(cmd="param", name="brightness", value=0.9), timing()))
    await asyncio.sleep(AUDIENCE_FRAME * 3)
    await broadcast.stop()
    for room in ("state", "state:audience"):  # performers and consoles, and the audience
        messages = [data for event, data, to in out.sent if event == "state" and to == room]
        assert [[c["seq"] for c in m["changes"]] for m in messages] == [[100, 101], [102]]
        assert messages[0]["changes"][0]["params"] == {"density": 0.99}


class FailingJournal:
    """A journal whose next batch fails, as a full disk's would."""

    def __init__(self, durable: Transport) -> None:
        self.durable = durable
        self.unavailable: str | None = None
        self.pending: list[tuple[journal.Record, asyncio.Future[None]]] = []

    def append(self, record: journal.Record) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((record, future))
        return future

    def write(self, ok: bool) -> None:
        for record, future in self.pending:
            if ok:
                self.durable.apply(record.change)
                future.set_result(None)
            else:
                future.set_exception(journal.JournalUnavailable("no space left on device"))
        self.unavailable = None if ok else "no space left on device"
        self.pending.clear()


async def test_the_nodes_hear_a_change_at_once_the_pages_once_it_is_on_disk(core: Performance) -> None:
    log: list[str] = []
    disk = FailingJournal(Transport(core.score))
    pipeline = Pipeline(core, disk, timing)  # type: ignore[arg-type]
    pipeline.on_accepted.append(lambda a: log.append(f"nodes {a.change.seq}"))
    pipeline.on_durable.append(lambda a: log.append(f"pages {a.change.seq}"))
    done = pipeline.submit(SetParam(cmd="param", name="density", value=0.5), {})
    assert log == ["nodes 1"] and not done.done()
    disk.write(ok=True)
    assert (await done).seq == 1 and log == ["nodes 1", "pages 1"]


async def test_a_change_that_cannot_be_kept_is_refused_and_undone(core: Performance) -> None:
    disk = FailingJournal(Transport(core.score))
    pipeline = Pipeline(core, disk, timing)  # type: ignore[arg-type]
    reverted: list[bool] = []
    pipeline.on_reverted.append(lambda: reverted.append(True))
    done = pipeline.submit(SetParam(cmd="param", name="density", value=0.9), {})
    assert core.transport.params["density"].at(T0 + 1) == 0.9
    disk.write(ok=False)
    with pytest.raises(Rejected) as refused:
        await done
    assert refused.value.code == "journal_unavailable"
    assert core.transport.seq == 0 and core.transport.params["density"].at(T0 + 1) == 0.3 and reverted
    with pytest.raises(Rejected, match="changes cannot be kept"):  # refused until the disk can be written
        pipeline.submit(SetParam(cmd="param", name="density", value=0.1), {})


async def test_a_node_s_cue_channel_brings_its_cues_and_its_ticket_works_once(tmp_path: Path) -> None:
    conductor = ConductorProcess(write_concert(tmp_path))
    node = TuttiClient(conductor.url, "node", TOKENS["node"], name="n", parts=["drones"])
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    events: list[Any] = []
    node.sio.on("cues", events.append)
    try:
        await node.connect()
        await boss.connect()
        await until(lambda: events, 5, "a joining node is sent its settings as an event")
        events.clear()
        path = node.welcome["cue_channel"]
        async with aiohttp.ClientSession() as http, http.ws_connect(conductor.url + path) as channel:
            await until(lambda: conductor.status()["clients"], 5, "no clients")
            assert (await boss.command("param", name="density", value=1.0))["ok"]
            batch = json.loads((await channel.receive(timeout=5)).data)
            assert batch["cues"][0]["args"] == [PART_GROUP_BASE, "amp", 0.4]
            async with http.get(conductor.url + path) as again:
                assert again.status == 403  # the ticket was used
        assert not events  # the channel brought it, not an event as well
    finally:
        await node.close()
        await boss.close()
        conductor.stop()
