"""Who is connected: joining with a role and a token, the rooms each client is in, its welcome.

A client joins with ``protocol.Auth``. Its token is checked against the concert's for its role
(and part); a node's rooms say which cues reach it. Every welcomed client is in ``JOINED`` (clock
sync is answered for it); every one but the nodes also follows the state (``FOLLOWERS``, and the
audience ``AUDIENCE_FOLLOWERS``): nodes are sent what they play, not what browsers draw.
"""

from __future__ import annotations

import hmac
import logging
from collections import deque
from typing import Any

import pydantic
from pydantic import ConfigDict, Field

from conductor.core.concert import Concert
from conductor.core.protocol import Auth, ClientInfo, Rejected

log = logging.getLogger("tutti.joins")
JOINED = "joined"  # every welcomed client
FOLLOWERS = "state"  # every welcomed client but nodes and the audience: state changes go to it
AUDIENCE_FOLLOWERS = "state:audience"  # the audience, sent parameter changes less often
NODES = "role:node"  # every node: sent changes as they are accepted (``transport`` events)
JOIN_FAILURES = 10  # failed joins from one address ...
JOIN_COOLDOWN = 30.0  # ... within this many seconds bar it until they are that old


class Client(ClientInfo):
    """A connected client, as the console lists it, and what the conductor keeps of it besides."""

    model_config = ConfigDict(frozen=False)
    synth: bool = Field(True, exclude=True)  # nodes: false for one that runs only audio links (a hub)
    address: str = Field("", exclude=True)  # where it connected from (a node's OSC bundles are timed by its clock)
    rooms: list[str] = Field([], exclude=True)

    def info(self) -> ClientInfo:
        return self


class JoinLimiter:
    """Refuses joins from an address for a while after it failed too often (guessing tokens)."""

    def __init__(self) -> None:
        self.failures: dict[str, deque[float]] = {}

    def failed(self, source: str, now: float) -> None:
        window = self.failures.setdefault(source, deque(maxlen=JOIN_FAILURES))
        window.append(now)
        if len(self.failures) > 10_000:  # forget the oldest address rather than grow without end
            self.failures.pop(next(iter(self.failures)))

    def barred(self, source: str, now: float) -> bool:
        window = self.failures.get(source)
        return bool(window) and len(window) == JOIN_FAILURES and now - window[0] < JOIN_COOLDOWN  # type: ignore[arg-type]


def summary(error: pydantic.ValidationError) -> str:
    """A validation error in a line: the first few fields and what is wrong with each."""
    parts = []
    for err in error.errors(include_url=False)[:3]:
        where = ".".join(str(x) for x in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class Roster:
    """The connected clients of one performance."""

    def __init__(self, concert: Concert):
        self.concert = concert
        self.score = concert.score.score
        self.clients: dict[str, Client] = {}
        self.failed = JoinLimiter()

    def auth(self, auth: Any) -> Auth:
        """The join's ``auth``, validated and its token checked; raises Rejected."""
        if not isinstance(auth, dict):
            raise Rejected("bad_auth", "connect with auth {role, token, part?, site?, name?}")
        try:
            joined = Auth.model_validate(auth)
        except pydantic.ValidationError as e:
            raise Rejected("bad_auth", summary(e)) from e
        if joined.role == "performer" and (joined.part is None or self.score.part(joined.part) is None):
            known = ", ".join(p.id for p in self.score.parts)
            raise Rejected("unknown_part", f"a performer needs one of the parts: {known}")
        expected = self.concert.token_for(joined.role, joined.part)
        if expected is not None and not hmac.compare_digest(expected.encode(), joined.token.encode()):
            per_part = joined.role == "performer" and self.concert.part_tokens
            whose = f"part '{joined.part}'" if per_part else f"role '{joined.role}'"
            raise Rejected("bad_token", f"wrong token for {whose}")
        unknown = [p for p in joined.parts if self.score.part(p) is None]
        if unknown:
            raise Rejected("unknown_part", f"no part {', '.join(unknown)} in the score")
        return joined

    def admit(self, sid: str, joined: Auth, now: float, worker: str) -> tuple[Client, list[str]]:
        """A client for a checked join, and the rooms it goes in."""
        part = self.score.part(joined.part) if joined.part else None
        site = joined.site or (part.site if part else None)
        name = joined.name or f"{joined.role}-{sid[:4]}"
        client = Client(
            sid=sid, role=joined.role, name=name, part=joined.part, site=site, joined=now, last_seen=now,
            worker=worker, synth=joined.synth,
        )  # fmt: skip
        rooms = [f"role:{client.role}", JOINED]  # role:node is NODES
        if client.role == "node":  # the rooms cues are sent to: all nodes, a site, a part, one node
            client.parts = self._node_parts(joined, site)
            rooms += [f"nodes:{r}" for r in [f"node:{client.name}", *(f"part:{p}" for p in client.parts)]]
            rooms += ["nodes:all"] if joined.synth else []
            rooms += [f"nodes:site:{site}"] if site and joined.synth else []
        else:
            rooms.append(AUDIENCE_FOLLOWERS if client.role == "audience" else FOLLOWERS)
        client.rooms = rooms
        self.clients[sid] = client
        log.info("%s joined as %s%s", client.name, client.role, f" ({client.part})" if client.part else "")
        return client, rooms

    def _node_parts(self, joined: Auth, site: str | None) -> list[str]:
        """The parts a node sounds: those it names, else its site's, else (no site) every part."""
        if not joined.synth:
            return []
        if joined.parts:
            return list(joined.parts)
        return [p.id for p in self.score.parts if site is None or p.site == site]

    def runs_audio(self, node: Client) -> bool:
        """Whether a node runs an end of the JackTrip topology: its site's, if it is that end's node."""
        audio = self.concert.settings.audio
        if audio is None:
            return False
        return any(end.site == node.site and end.node in (None, node.name) for end in audio.ends())

    def leave(self, sid: str) -> None:
        if client := self.clients.pop(sid, None):
            log.info("%s left", client.name)

    def forget_worker(self, worker: str) -> None:
        """A web worker died: its clients are gone (they will join again through another)."""
        for sid in [sid for sid, c in self.clients.items() if c.worker == worker]:
            del self.clients[sid]

    def delays(self) -> dict[str, float]:
        return {c.name: c.delay for c in self.clients.values() if c.delay is not None}

    def links(self) -> list[dict[str, Any]]:
        """Every JackTrip end's last report, from the nodes' health."""
        return [link for c in self.clients.values() if c.health for link in c.health.get("links", [])]
