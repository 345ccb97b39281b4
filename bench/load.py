"""A load generator: many Socket.IO clients in one process, joined to a conductor, timing what reaches them.

    .venv/bin/python bench/load.py URL --clients 300 [--role audience] [--token T]

Clients join (at most 50 at a time, as a room full of phones would), then the process prints
``ready N`` and records the local receipt time of every ``state`` change. A line on its standard
input ends it: it prints one JSON line, ``{"joined", "failed", "received": [[seq, time], ...],
"updates": [[time, [param, ...]], ...]}`` (``updates``: each state message that set parameters, at
the first client only), and exits. Browsers are too heavy for hundreds of clients on one machine; these speak the same
protocol, over WebSocket, as Tutti's own clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import socketio

JOIN_AT_ONCE = 50


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--role", default="audience")
    parser.add_argument("--token", default="")
    args = parser.parse_args()
    received: list[tuple[int, float]] = []
    updates: list[tuple[float, list[str]]] = []
    clients: list[socketio.AsyncClient] = []
    gate = asyncio.Semaphore(JOIN_AT_ONCE)

    def on_state(data: dict[str, Any], first: bool) -> None:
        now = time.time()
        received.extend((change["seq"], now) for change in data.get("changes", []))
        if first:
            updates.append((now, sorted({p for change in data.get("changes", []) for p in change.get("params", {})})))

    async def join(first: bool) -> bool:
        sio = socketio.AsyncClient(reconnection=False)
        sio.on("state", lambda data: on_state(data, first))
        async with gate:
            try:
                await sio.connect(
                    args.url, auth={"role": args.role, "token": args.token}, transports=["websocket"], wait_timeout=20
                )
            except socketio.exceptions.ConnectionError:
                return False
        clients.append(sio)
        return True

    joined = await asyncio.gather(*(join(i == 0) for i in range(args.clients)))
    print(f"ready {sum(joined)}", flush=True)
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.readline()
    result = {"joined": sum(joined), "failed": joined.count(False), "received": received, "updates": updates}
    print(json.dumps(result), flush=True)
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
