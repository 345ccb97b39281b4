"""The conductor's network face: what every connection gets, whatever the client offers."""

from __future__ import annotations

import aiohttp

from tests.conftest import ConductorProcess


async def test_websocket_compression_is_declined(conductor: ConductorProcess) -> None:
    # Browsers offer permessage-deflate; accepted, every broadcast would be deflated again for
    # each client (bench/fanout.py: most of a fan-out's cost, and 100 KiB per connection).
    url = conductor.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=15) as ws:
        assert ws.compress == 0  # the server answered without the extension
        opening = await ws.receive_str()
        assert opening.startswith("0{")  # engine.io's open packet: the connection works
