"""One performance, several web workers, on Redis: for concerts with more devices than one process serves.

``tutti serve CONCERT --workers N --redis URL``: this process owns the performance (clock,
transport, journal, cue scheduler, OSC) and serves no client itself. N worker processes on the
same machine share the concert's port (``SO_REUSEPORT``: the kernel spreads new connections among
them), and each runs a gateway (``gateway.py``) with python-socketio's ``AsyncRedisManager``.

- **Broadcasts** leave the performance once, through a write-only manager, and every worker
  delivers them to its own clients.
- **Clock sync** is answered by every worker, from the conductor's clock: they share the
  machine's monotonic clock and the performance's origin.
- **Everything else a client sends** goes from its worker to the performance over Redis (one
  request channel; a reply channel per worker), and is handled there in arrival order.

Workers end with this process, and one that dies is started again; its clients reconnect (to any
worker) and are welcomed again. Clients must use the WebSocket transport (Tutti's own all do):
long-polling would need sticky sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import sys
import time
import uuid
from typing import Any

import redis.asyncio as redis
import socketio

from conductor.core.clock import ConductorClock
from conductor.core.concert import Concert
from conductor.core.process import die_with_parent
from conductor.core.protocol import Rejected
from conductor.server import fanout
from conductor.server.conductor import Conductor
from conductor.server.gateway import Gateway, Source

log = logging.getLogger("tutti.cluster")
CALL_TIMEOUT = 5.0  # seconds a worker waits for the performance before refusing with "unavailable"
READY_TIMEOUT = 30.0  # seconds for every worker to start listening
RESTART_AFTER = (0.2, 0.5, 1.0, 2.0, 5.0)  # a dying worker is started again after these, in turn


def _channels(run: str, worker: str = "") -> dict[str, str]:
    return {
        "socketio": f"tutti:{run}:socketio",
        "requests": f"tutti:{run}:requests",
        "replies": f"tutti:{run}:replies:{worker}",
    }


def _dumps(message: dict[str, Any]) -> str:
    # A client's payload came as JSON; anything else (binary attachments) is named, and refused there.
    return json.dumps(message, separators=(",", ":"), default=lambda o: f"<{type(o).__name__}>")


class RedisOut:
    """The performance's ``gateway.Out`` with workers: python-socketio's write-only Redis manager."""

    def __init__(self, url: str, run: str):
        self.manager = socketio.AsyncRedisManager(url, channel=_channels(run)["socketio"], write_only=True)

    async def emit(
        self, event: str, data: Any, to: str | None = None, room: str | None = None, skip_sid: list[str] | None = None
    ) -> None:
        await self.manager.emit(event, data, namespace="/", room=to or room, skip_sid=skip_sid)

    async def enter_room(self, sid: str, room: str) -> None:
        await self.manager.enter_room(sid, "/", room)  # published to the worker that has the client


class RemotePerformance:
    """A worker's ``gateway.Performance``: every call goes to the performance over Redis."""

    def __init__(self, url: str, run: str, worker: str):
        self.redis = redis.Redis.from_url(url)
        self.worker = worker
        self.channels = _channels(run, worker)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count()

    async def start(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channels["replies"])
        self._listening = asyncio.create_task(self._listen(pubsub))

    async def _listen(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            reply = json.loads(message["data"])
            future = self.pending.pop(reply.get("id"), None)
            if future and not future.done():
                future.set_result(reply)

    async def _call(self, op: str, **fields: Any) -> Any:
        call = next(self.ids)
        future = self.pending[call] = asyncio.get_running_loop().create_future()
        try:
            await self._tell(op, id=call, **fields)
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await future
        except (TimeoutError, redis.RedisError) as e:
            raise Rejected("unavailable", "the conductor did not answer; try again") from e
        finally:
            self.pending.pop(call, None)
        if rejected := reply.get("rejected"):
            raise Rejected(rejected["code"], rejected["message"])
        return reply.get("result")

    async def _tell(self, op: str, **fields: Any) -> None:
        await self.redis.publish(self.channels["requests"], _dumps({"op": op, "worker": self.worker, **fields}))

    async def join(self, sid: str, auth: Any, source: Source) -> None:
        await self._call("join", sid=sid, auth=auth, address=source.address)

    async def leave(self, sid: str) -> None:
        try:
            await self._tell("leave", sid=sid)
        except redis.RedisError as e:
            raise Rejected("unavailable", str(e)) from e

    async def handle(self, sid: str, event: str, args: list[Any]) -> Any:
        return await self._call("handle", sid=sid, event=event, args=args)

    async def count(self, rejected: Rejected, event: str, client: str) -> None:
        with contextlib.suppress(redis.RedisError):
            await self._tell("count", code=rejected.code, message=rejected.message, event=event, client=client)

    async def status(self) -> dict[str, Any]:
        return await self._call("status")

    async def hello(self) -> None:
        await self._call("hello")

    async def close(self) -> None:
        self._listening.cancel()
        await self.redis.aclose()


class Workers:
    """The performance's side: it answers the workers' requests, and starts and watches them."""

    def __init__(self, conductor: Conductor, url: str, run: str, count: int, command: list[str]):
        self.conductor = conductor
        self.redis = redis.Redis.from_url(url)
        self.channels = _channels(run)
        self.run = run
        self.names = [f"w{i + 1}" for i in range(count)]
        self.command = command  # the worker command line, less --name
        self.ready: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.names}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.restarts: dict[str, int] = dict.fromkeys(self.names, 0)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Subscribe first, so no worker's hello is missed; then start them and wait for all."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channels["requests"])
        self._tasks.append(asyncio.create_task(self._serve(pubsub)))
        self._tasks += [asyncio.create_task(self._watch(name)) for name in self.names]
        async with asyncio.timeout(READY_TIMEOUT):
            for event in self.ready.values():
                await event.wait()

    async def _serve(self, pubsub: Any) -> None:
        # One at a time, in arrival order: a client's join comes before its first command.
        async for message in pubsub.listen():
            try:
                request = json.loads(message["data"])
                reply = await self._answer(request)
                if "id" in request:
                    replies = _channels(self.run, str(request.get("worker")))["replies"]
                    await self.redis.publish(replies, _dumps({"id": request["id"], **reply}))
            except Exception:
                log.exception("answering a worker")

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        conductor, op, worker = self.conductor, request.get("op"), str(request.get("worker"))
        try:
            if op == "join":
                await conductor.join(request["sid"], request.get("auth"), Source(str(request.get("address")), worker))
                return {}
            if op == "leave":
                await conductor.leave(request["sid"])
                return {}
            if op == "handle":
                return {"result": await conductor.handle(request["sid"], str(request["event"]), request["args"])}
            if op == "count":
                rejected = Rejected(str(request["code"]), str(request["message"]))
                await conductor.count(rejected, str(request["event"]), str(request["client"]))
                return {}
            if op == "status":
                return {"result": {**await conductor.status(), "workers": self.describe()}}
            if op == "hello" and worker in self.ready:
                self.ready[worker].set()
                return {}
            raise Rejected("unknown_request", f"no request '{op}'")
        except Rejected as r:
            return {"rejected": {"code": r.code, "message": r.message}}

    def describe(self) -> dict[str, Any]:
        clients = [c.worker for c in self.conductor.clients.values()]
        return {
            name: {
                "pid": proc.pid if (proc := self.procs.get(name)) else None,
                "up": self.ready[name].is_set(),
                "clients": clients.count(name),
                "restarts": self.restarts[name],
            }
            for name in self.names
        }

    async def _watch(self, name: str) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*self.command, "--name", name, preexec_fn=die_with_parent)
            self.procs[name] = proc
            code = await proc.wait()
            self.ready[name].clear()
            self.conductor.forget_worker(name)
            failures = 0 if time.monotonic() - started > 30 else failures + 1
            pause = RESTART_AFTER[min(failures, len(RESTART_AFTER) - 1)]
            log.warning("worker %s ended (exit %s); starting it again in %.1f s", name, code, pause)
            self.restarts[name] += 1
            await asyncio.sleep(pause)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        await self.redis.aclose()


def free_port(host: str) -> int:
    """A port for the workers to share, when the concert asks for any (port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Unreachable(Exception):
    """Redis is not there: said in one line, before anything starts."""


async def start_workers(
    path: str,
    concert: Concert,
    url: str,
    count: int,
    hosts: list[str],
    port: int,
    fresh: bool,
    skip_bad_journal_lines: bool = False,
) -> tuple[Conductor, Workers, int]:
    """The performance in this process, writing to Redis, and ``count`` workers serving its port."""
    try:
        async with redis.Redis.from_url(url, socket_connect_timeout=5) as r:
            await r.ping()
    except (redis.RedisError, ValueError) as e:
        raise Unreachable(f"tutti serve --workers: cannot reach Redis at {url}: {e}") from None
    run = uuid.uuid4().hex[:12]  # concerts sharing a Redis server keep to their own channels
    clock = ConductorClock()
    conductor = Conductor(concert, RedisOut(url, run), clock, fresh, skip_bad_journal_lines)
    port = port or free_port(hosts[0])
    command = [sys.executable, "-m", "conductor", "worker", path, "--redis", url, "--run", run]
    command += ["--origin", repr(clock.origin), "--port", str(port), *(x for h in hosts for x in ("--host", h))]
    workers = Workers(conductor, url, run, count, command)
    await conductor.start(hosts[0])
    await workers.start()
    return conductor, workers, port


async def run_worker(
    concert: Concert, url: str, run: str, name: str, origin: float, hosts: list[str], port: int, stop: asyncio.Event
) -> None:
    """A web worker until ``stop``: a gateway on the shared port, broadcasts from Redis, requests to the performance."""
    manager = fanout.RedisFanOut(url, channel=_channels(run)["socketio"])
    gateway = Gateway(concert, ConductorClock(origin), client_manager=manager, worker=name)
    # python-socketio subscribes on the first connection; that client's rooms and welcome would be
    # published before it listens. Subscribe before taking any.
    gateway.sio.manager_initialized = True
    manager.initialize()
    for _ in range(1000):
        if manager.pubsub and manager.pubsub.subscribed:
            break
        await asyncio.sleep(0.01)
    else:
        raise RuntimeError(f"worker {name}: could not subscribe to {url}")
    performance = RemotePerformance(url, run, name)
    await performance.start()
    gateway.serve(performance)
    runner, _ = await gateway.start(hosts, port, reuse_port=True)
    await performance.hello()
    await stop.wait()
    await gateway.stop(runner)
    await performance.close()
