"""The conductor's network face: what every connection gets, whatever the client offers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from conductor import protocol
from conductor.client import TuttiClient
from tests.conftest import TOKENS, ConductorProcess, write_concert
from tests.test_node import until


async def test_websocket_compression_is_declined(conductor: ConductorProcess) -> None:
    # Browsers offer permessage-deflate; accepted, every broadcast would be deflated again for
    # each client (bench/fanout.py: most of a fan-out's cost, and 100 KiB per connection).
    url = conductor.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=15) as ws:
        assert ws.compress == 0  # the server answered without the extension
        opening = await ws.receive_str()
        assert opening.startswith("0{")  # engine.io's open packet: the connection works


async def test_an_overloaded_conductor_lets_the_audience_go_first(tmp_path: Path) -> None:
    # A low limit, and a console asking for invitations over and over (each one makes a QR code per
    # part: some 10 ms of work) overloads it on purpose.
    conductor = ConductorProcess(write_concert(tmp_path, overload_lag=0.005))
    performer = TuttiClient(conductor.url, "performer", TOKENS["performer"], part="drones")
    node = TuttiClient(conductor.url, "node", TOKENS["node"], name="n1")
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    audience = [TuttiClient(conductor.url, "audience", resync=60) for _ in range(30)]
    feeds: list[dict[str, Any]] = []
    boss.sio.on(protocol.CLIENTS, feeds.append)
    try:
        for client in [performer, node, boss, *audience]:
            await client.connect()

        invite = {"base": "http://127.0.0.1"}
        for _ in range(20):
            await asyncio.gather(*(boss.sio.call(protocol.INVITE, invite, timeout=10) for _ in range(20)))
            if sum(not a.sio.connected for a in audience) >= 5:
                break
        shed = [a for a in audience if any(e["code"] == "overloaded" for e in a.errors)]
        assert shed, "nobody was let go"
        assert all(not a.sio.connected for a in shed)
        # The performer, the node and the conductor stayed, and were never refused.
        for client in (performer, node, boss):
            assert client.sio.connected and not client.errors
        assert conductor.status()["rejections"]["overloaded"] >= len(shed)
        # The console says so.
        await until(lambda: any(r["code"] == "overloaded" for f in feeds for r in f["recent"]), 3, "not on the console")
    finally:
        for client in [performer, node, boss, *audience]:
            await client.close()
        conductor.stop()
