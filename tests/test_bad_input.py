"""Malformed input is refused with an error event and counted; the conductor keeps serving everyone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from conductor.client import TuttiClient
from tests.conftest import TOKENS, ConductorProcess
from tests.test_node import until

BAD_EVENTS: list[tuple[str, Any, str]] = [
    ("command", "play", "bad_payload"),
    ("command", {"cmd": "play", "extra": 1}, "bad_payload"),
    ("command", {"cmd": "jump"}, "bad_payload"),
    ("command", {"cmd": "seek"}, "bad_payload"),
    ("command", {"cmd": "seek", "position": "10"}, "bad_payload"),
    ("command", {"cmd": "seek", "position": -1}, "bad_payload"),
    ("command", {"cmd": "tempo", "bpm": 1e9}, "bad_payload"),
    ("command", {"cmd": "play", "at": 1.0}, "too_late"),
    ("command", {"cmd": "play", "pad": "x" * 100_000}, "too_large"),
    ("command", [1, 2, 3], "bad_payload"),
    ("command", None, "bad_payload"),
    ("sync", "now", "bad_payload"),
    ("sync", True, "bad_payload"),
    ("sync", {"t0": 1}, "bad_payload"),
    ("report", {"rtt": -1, "offset": 0, "error": 0}, "bad_payload"),
    ("report", {"rtt": 0.1}, "bad_payload"),
    ("control", {"id": "level"}, "bad_payload"),
    ("control", {"id": "level", "value": "loud"}, "bad_payload"),
    ("control", {"id": "level", "value": 0.5}, "forbidden"),  # a conductor plays no part
    ("health", {"up": True, "late": 0, "cues": 0}, "forbidden"),  # only nodes report health
    ("sound", {"args": [1]}, "bad_payload"),  # no address
    ("sound", {"address": "no slash"}, "bad_payload"),
    ("sound", {"address": "/s_new", "args": [[1]]}, "bad_payload"),
    ("sound", {"address": "/s_new", "target": "site:mars"}, "bad_payload"),
    ("sound", {"address": "/s_new", "args": ["$group"]}, "bad_payload"),  # no part to take it from
    ("sound", {"address": "/s_new", "schedule": "immediate", "at": 1e10}, "bad_payload"),
    ("sound", {"address": "/s_new", "at": 1.0}, "too_late"),
    ("no_such_event", {"a": 1}, "unknown_event"),
]


@pytest.mark.parametrize(
    ("part", "payload", "code"),
    [
        ("drones", {"id": "level", "value": 1.5}, "out_of_range"),
        ("drones", {"id": "level", "value": True}, "out_of_range"),
        ("pulses", {"id": "accent", "value": 1}, "bad_payload"),
        ("sketch", {"id": "swell", "value": [0.5, 2]}, "out_of_range"),
        ("sketch", {"id": "swell", "value": [0.5]}, "bad_payload"),
        ("drones", {"id": "accent", "value": True}, "forbidden"),  # another part's control
    ],
)
async def test_bad_control_input_is_refused(
    conductor: ConductorProcess, part: str, payload: dict[str, Any], code: str
) -> None:
    player = TuttiClient(conductor.url, "performer", TOKENS["performer"], part=part)
    await player.connect()
    answer = await player.sio.call("control", payload, timeout=5)
    await player.close()
    assert answer["ok"] is False and answer["code"] == code, answer
    assert conductor.status()["state"]["seq"] == 0


async def test_bad_health_reports_are_refused(conductor: ConductorProcess) -> None:
    node = TuttiClient(conductor.url, "node", TOKENS["node"], name="n1")
    await node.connect()
    absurd = {"up": True, "late": 0, "cues": 0, "placement_ms": 1e6}  # a correction no scsynth needs
    for garbage in ({"up": "yes", "late": 0, "cues": 0}, {"up": True, "late": -1, "cues": 0}, {"up": True}, absurd):
        answer = await node.sio.call("health", garbage, timeout=5)
        assert answer["code"] == "bad_payload", answer
    assert "placement_ms" in answer["message"], answer
    await node.sio.emit("health", {"up": True, "late": 2, "cues": 7, "cpu_avg": 3.5})
    await asyncio.sleep(0.3)
    await node.close()
    assert conductor.status()["rejections"] == {"bad_payload": 4}


async def test_a_node_flooding_health_reports_is_held_to_a_rate_and_heard_again(conductor: ConductorProcess) -> None:
    """Each report is read and kept for the console: a node (a buggy one, or a stolen token) that
    sends them without end is refused beyond its allowance, and its next report in time is taken."""
    node = TuttiClient(conductor.url, "node", TOKENS["node"], name="n1")
    await node.connect()
    try:
        # More than twice the burst a node may send at once (what comes in while the flood is read is
        # allowed too: 20 a second), and fewer refusals than a flooder is let go for (100).
        for _ in range(90):
            await node.sio.emit("health", {"up": True, "late": 0, "cues": 0})

        def refused() -> int:
            return sum(e.get("code") == "rate_limited" for e in node.errors)

        await until(lambda: refused() >= 30, 10, f"only {refused()} of the flood refused")
        assert conductor.status()["rejections"]["rate_limited"] == refused()

        def heard() -> bool:  # a report in time, once the allowance has grown again
            nodes = [c for c in conductor.status()["clients"] if c["name"] == "n1"]
            return bool(nodes and (nodes[0]["health"] or {}).get("cues") == 7)

        for _ in range(50):  # reporting at a node's pace again (five a second here): soon taken
            await node.sio.emit("health", {"up": True, "late": 0, "cues": 7})
            await asyncio.sleep(0.2)
            if heard():
                break
        assert heard(), "the node's reports after the flood were not taken"
        assert node.sio.connected
    finally:
        await node.close()


async def test_every_bad_event_gets_an_error_and_is_counted(conductor: ConductorProcess) -> None:
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    await boss.connect()
    for event, payload, code in BAD_EVENTS:
        answer = await boss.sio.call(event, payload, timeout=5)
        assert answer["ok"] is False and answer["code"] == code, (event, payload, answer)
    answer = await boss.sio.call("command", ({"cmd": "play"}, "second"), timeout=5)  # two payloads
    assert answer["code"] == "bad_payload" and "exactly one payload" in answer["message"]
    await asyncio.sleep(0.2)
    assert len(boss.errors) == len(BAD_EVENTS) + 1
    assert all(e["message"] for e in boss.errors)
    status = conductor.status()
    assert sum(status["rejections"].values()) == len(BAD_EVENTS) + 1
    assert status["state"]["seq"] == 0  # nothing changed
    assert (await boss.command("play"))["ok"]  # and it still works
    await boss.close()


async def raw_socket(url: str, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    """An Engine.IO v4 WebSocket, joined to the default namespace as audience."""
    ws = await session.ws_connect(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket")
    assert (await ws.receive_str()).startswith("0{")
    await ws.send_str("40" + json.dumps({"role": "audience"}))
    assert (await ws.receive_str()).startswith("40{")
    assert (await ws.receive_str()).startswith('42["welcome"')
    return ws


async def next_event(ws: aiohttp.ClientWebSocketResponse, prefix: str) -> str:
    async with asyncio.timeout(5):
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith(prefix):
                return msg.data
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise ConnectionError("closed")


@pytest.mark.parametrize(
    "frame",
    [
        '42["sync", 1',
        "42{not a list}",
        "4Z",
        "49[]",
        "42[1,2]",
        "42",
        "4-1[]",
        '451-["x",{"_placeholder":true,"num":0}]',
    ],
)
async def test_undecodable_packets_are_answered_and_counted(conductor: ConductorProcess, frame: str) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await raw_socket(conductor.url, session)
        await ws.send_str(frame)
        if frame.startswith("451-"):
            await ws.send_bytes(b"\x00\xff garbage")
        error = json.loads((await next_event(ws, '42["error"'))[2:])[1]
        assert error["code"] in ("malformed", "unknown_event") and error["message"]
        await ws.send_str('421["sync",1.5]')  # the same socket is still served
        reply = json.loads((await next_event(ws, "431"))[3:])
        assert reply[0][0] == 1.5
        await ws.close()
    assert sum(conductor.status()["rejections"].values()) == 1


async def test_an_oversized_message_drops_only_its_sender(conductor: ConductorProcess) -> None:
    bystander = TuttiClient(conductor.url, "performer", TOKENS["performer"], part="drones")
    await bystander.connect()
    async with aiohttp.ClientSession() as session:
        ws = await raw_socket(conductor.url, session)
        await ws.send_str('42["command",{"pad":"' + "x" * 2_000_000 + '"}]')
        with pytest.raises(ConnectionError):
            await next_event(ws, "never")
    assert await bystander.sync_once()
    assert bystander.sio.connected
    await bystander.close()


async def test_garbage_from_many_clients_while_others_are_served(conductor: ConductorProcess) -> None:
    good = TuttiClient(conductor.url, "node", TOKENS["node"])
    await good.connect()
    frames = [
        '42["sync"',
        "42[[[[",
        "4\x00",
        '42["command",{"cmd":"seek","position":{"a":1}}]',
        "42[null]",
        '42["welcome",{}]',
        "40",
        "41",
        "43[]",
        '42["report",{"rtt":1e999}]',
    ]

    async def attacker() -> None:
        async with aiohttp.ClientSession() as session:
            ws = await raw_socket(conductor.url, session)
            for i in range(200):
                await ws.send_str(frames[i % len(frames)])
            await ws.close()

    loop = asyncio.get_running_loop()
    worst = 0.0
    attack = asyncio.gather(*(attacker() for _ in range(5)), return_exceptions=True)
    while not attack.done():
        start = loop.time()
        assert await good.sync_once()
        worst = max(worst, loop.time() - start)
    await attack
    assert await good.sync_once()
    await good.close()
    assert worst < 0.5, f"a good client waited {worst * 1000:.0f} ms"
    assert sum(conductor.status()["rejections"].values()) > 100
