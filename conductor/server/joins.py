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
TIMED = ("node", "performer")  # the roles whose delay sets the lookahead
AUDIENCE_FOLLOWERS = "state:audience"  # the audience, sent parameter changes less often
NODES = "role:node"  # every node: sent changes as they are accepted (``transport`` events)
JOIN_FAILURES = 10  # wrong tokens for a role from one address ...
ROLE_FAILURES = 30  # ... or for a role from anywhere ...
JOIN_COOLDOWN = 30.0  # ... within this many seconds slow that role's joins until they are that old
BARRED_DELAY = 1.0  # seconds a join waits for its token to be checked while its role is barred
LIMITED_SOURCES = 10_000  # addresses remembered at most


def part_room(part: str) -> str:
    """The pages of one part's performers (sent the sketch events for that part)."""
    return f"part:{part}"


class Client(ClientInfo):
    """A connected client, as the console lists it, and what the conductor keeps of it besides."""

    model_config = ConfigDict(frozen=False)
    synth: bool = Field(True, exclude=True)  # nodes: false for one that runs only audio links (a hub)
    address: str = Field("", exclude=True)  # where it connected from (a node's OSC bundles are timed by its clock)
    rooms: list[str] = Field([], exclude=True)

    def info(self) -> ClientInfo:
        return self


class JoinLimiter:
    """Slows token guessing: per role from one address, and per role from every address together.

    Only wrong tokens count (a malformed join guesses nothing). While a role is barred, a join
    for it waits ``BARRED_DELAY`` before its token is checked, and a right token is still let in:
    others failing from the same address (a venue's NAT) never lock the real console out.
    """

    def __init__(self) -> None:
        self.failures: dict[tuple[str, str], deque[float]] = {}  # (address, role) -> when
        self.role_failures: dict[str, deque[float]] = {}  # role -> when, from any address

    def failed(self, source: str, role: str, now: float) -> None:
        self.failures.setdefault((source, role), deque(maxlen=JOIN_FAILURES)).append(now)
        self.role_failures.setdefault(role, deque(maxlen=ROLE_FAILURES)).append(now)
        if len(self.failures) > LIMITED_SOURCES:  # forget the oldest address rather than grow without end
            self.failures.pop(next(iter(self.failures)))

    def barred(self, source: str, role: str, now: float) -> bool:
        for window in (self.failures.get((source, role)), self.role_failures.get(role)):
            if window and len(window) == window.maxlen and now - window[0] < JOIN_COOLDOWN:
                return True
        return False


_PLAIN = {  # pydantic's error types, as a person would say them
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "greater_than": "must be more than {gt}",
    "less_than": "must be less than {lt}",
    "missing": "is missing",
    "extra_forbidden": "is not one of this message's fields",
    "literal_error": "must be {expected}",
    "union_tag_invalid": "must be one of {expected_tags}",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "string_too_long": "is too long (at most {max_length} characters)",
    "string_too_short": "cannot be empty",
    "finite_number": "must be a finite number",
}


# pydantic's labels for the branches of a union of types, as a person would say them
_KINDS = {"int": "a number", "float": "a number", "bool": "true or false", "str": "text", "tuple": "a pair",
          "list": "a list", "dict": "an object", "union": "a value", "none": "null"}  # fmt: skip


def summary(error: pydantic.ValidationError) -> str:
    """A validation error in a line, in plain words: the first few fields and what is wrong with each."""
    fields: dict[str, list[tuple[str, str]]] = {}  # field -> (union branch, what is wrong)
    for err in error.errors(include_url=False):
        # A tagged union puts the tag (the command's name) first, and a union of types names the
        # branch last; the field is the last name a person wrote.
        names = [x for x in err["loc"] if isinstance(x, str)]
        branch = _KINDS[names.pop().split("[")[0]] if names and names[-1].split("[")[0] in _KINDS else ""
        plain = _PLAIN.get(err["type"])
        fields.setdefault(names[-1] if names else "payload", []).append(
            (branch, plain.format(**err.get("ctx", {})) if plain else err["msg"])
        )
    parts = []
    for where, problems in list(fields.items())[:3]:
        if len(problems) > 1 and all(branch for branch, _ in problems):  # none of a union's kinds fits
            *rest, last = dict.fromkeys(branch for branch, _ in problems)
            parts.append(f"{where}: must be {', '.join(rest) + ', or ' if rest else ''}{last}")
        else:
            parts.append(f"{where}: {problems[0][1]}")
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
        if joined.role == "composer" and joined.part is not None and self.score.part(joined.part) is None:
            raise Rejected("unknown_part", f"no part '{joined.part}' in the score")
        if joined.role == "performer" and (joined.part is None or self.score.part(joined.part) is None):
            known = ", ".join(p.id for p in self.score.parts)
            raise Rejected("unknown_part", f"a performer needs one of the parts: {known}")
        expected = self.concert.token_for(joined.role, joined.part)
        if expected is not None and not hmac.compare_digest(expected.encode(), joined.token.encode()):
            per_part = joined.role == "performer" and self.concert.part_tokens
            whose = f"part '{joined.part}'" if per_part else f"role '{joined.role}'"
            raise Rejected("bad_token", f"{'wrong token' if joined.token else 'no token given'} for {whose}")
        unknown = [p for p in joined.parts if self.score.part(p) is None]
        if unknown:
            raise Rejected("unknown_part", f"no part {', '.join(unknown)} in the score")
        return joined

    def admit(self, sid: str, joined: Auth, now: float, worker: str) -> tuple[Client, list[str]]:
        """A client for a checked join, and the rooms it goes in."""
        part = self.score.part(joined.part) if joined.part else None
        site = joined.site or (part.site if part else None)
        # Unnamed: the part (or role) it is, and a few letters to tell two apart.
        name = self._unique(joined.name or f"{part.name if part else joined.role} ({sid[:4]})")
        client = Client(
            sid=sid, role=joined.role, name=name, part=joined.part, site=site, joined=now, last_seen=now,
            worker=worker, synth=joined.synth,
        )  # fmt: skip
        rooms = [f"role:{client.role}", JOINED]  # role:node is NODES
        if client.role == "node":  # the rooms cues are sent to: all nodes, a site, a part, one node
            client.parts = self._node_parts(joined, site)
            # Cues for ``node:NAME`` reach it under the name it asked for, even while a stale
            # connection of its own still holds that name (it is listed as NAME-2 until then).
            node_room = f"node:{joined.name or client.name}"
            rooms += [f"nodes:{r}" for r in [node_room, *(f"part:{p}" for p in client.parts)]]
            rooms += ["nodes:all"] if joined.synth else []
            rooms += [f"nodes:site:{site}"] if site and joined.synth else []
        else:
            rooms.append(AUDIENCE_FOLLOWERS if client.role == "audience" else FOLLOWERS)
            # a composer's view of a part gets that part's sketch events too (but sends none)
            rooms += [part_room(client.part)] if client.role in ("performer", "composer") and client.part else []
        client.rooms = rooms
        self.clients[sid] = client
        log.info("%s joined as %s%s", client.name, client.role, f" ({client.part})" if client.part else "")
        return client, rooms

    def _unique(self, name: str) -> str:
        """Names are unique: the console, the lookahead and ``tutti status`` tell clients apart by them."""
        taken = {c.name for c in self.clients.values()}
        n, unique = 1, name
        while unique in taken:
            n += 1
            unique = f"{name}-{n}"
        return unique

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
        """What the lookahead follows: how late the conductor's messages reach each node and
        performer (who play in time). The audience and consoles only watch."""
        return {c.name: c.delay for c in self.clients.values() if c.delay is not None and c.role in TIMED}

    def node_names(self) -> set[str]:
        return {c.name for c in self.clients.values() if c.role == "node"}

    def link_leads(self) -> dict[str, float]:
        """How long before it sounds each node with an Ableton Link session needs a change."""
        return {
            c.name: float(c.health["link"].get("lead", 0.0))
            for c in self.clients.values()
            if (c.health or {}).get("link")
        }

    def links(self) -> list[dict[str, Any]]:
        """Every JackTrip end's last report, from the nodes' health."""
        return [link for c in self.clients.values() if c.health for link in c.health.get("links", [])]

    def hub_joined(self) -> list[str]:
        """The sites whose link to the hub is connected, as their nodes last said."""
        joined = {link["site"] for link in self.links() if link["role"] == "client" and link["state"] == "connected"}
        return sorted(joined)
