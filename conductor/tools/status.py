"""``tutti status``: the console in a terminal, for an operator with no browser at hand.

It joins as a conductor-role client and draws what the browser console shows from the same
``clients`` feed: transport, lookahead, clients per role and site, nodes and their scsynth, audio
links, late cues and refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from conductor.client import TuttiClient
from conductor.core import protocol


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:06.3f}"


def render(client: TuttiClient, feed: dict[str, Any]) -> Group:
    """One frame of the dashboard."""
    transport = client.transport
    now = client.clock.now()
    title = Text(transport.score.title if transport else "", style="bold")
    if transport:
        position = transport.position(now)
        playing = transport.segments.at(now).playing
        still = "stopped" if position == 0 else "paused"
        state = "ended" if position >= transport.score.duration else "playing" if playing else still
        title.append(f"   {state} at {_clock(position)}")
    lookahead = feed.get("lookahead", {})
    late = sum((c.get("health") or {}).get("cues_late", 0) for c in feed["clients"])
    title.append(f"   lookahead {lookahead.get('value', 0) * 1000:.0f} ms")
    if lookahead.get("worst"):
        title.append(f" (set by {lookahead['worst']})")
    title.append(f"   {late} cues late")

    who = Table(title="Clients", title_justify="left")
    for column in ("name", "role", "part", "site", "rtt ms"):
        who.add_column(column)
    for c in sorted(feed["clients"], key=lambda c: (c["role"], c.get("part") or "", c["name"])):
        part = ", ".join(c.get("parts") or []) if c["role"] == "node" else c.get("part") or ""
        rtt = "–" if c.get("rtt") is None else f"{c['rtt'] * 1000:.1f}"
        who.add_row(c["name"], c["role"], part, c.get("site") or "–", rtt)
    for site, n in sorted(feed.get("audience", {}).items()):
        who.add_row(f"{n} in the audience", "audience", "", site or "–", "")
    if transport:  # a part no performer plays is missing
        present = {c.get("part") for c in feed["clients"] if c["role"] == "performer"}
        for part in transport.score.parts:
            if part.id not in present:
                who.add_row(Text("nobody", style="bold red"), "performer", part.id, part.site or "–", "")

    nodes = Table(title="Nodes", title_justify="left")
    for column in ("name", "site", "scsynth", "cpu %", "synths", "cues", "late", "clock ± ms", "link"):
        nodes.add_column(column)
    links = Table(title="Audio links", title_justify="left")
    for column in ("site", "end", "state", "round trip ms", "underruns", "lost", "restarts", "last error"):
        links.add_column(column)
    for c in feed["clients"]:
        if c["role"] != "node":
            continue
        h = c.get("health") or {}
        scsynth = Text("up", style="green") if h.get("up") else Text("DOWN", style="bold red")
        late_cues = h.get("cues_late", 0) + h.get("late", 0)
        nodes.add_row(
            c["name"], c.get("site") or "–", scsynth, f"{h.get('cpu_avg', 0):.1f}", str(h.get("synths", 0)),
            str(h.get("cues", 0)), Text(str(late_cues), style="red" if late_cues else ""),
            f"{(c.get('error') or 0) * 1000:.2f}", link_of(h.get("link")),
        )  # fmt: skip
        for link in h.get("links", []):
            end = "hub" if link["role"] == "hub" else f"{link['role']} of {link.get('peer', '')}"
            state = Text(link["state"], style="green" if link["state"] == "connected" else "bold red")
            trip = link.get("latency_ms")
            links.add_row(
                link["site"], end, state, "–" if trip is None else f"{trip:.2f}", str(link.get("underruns", 0)),
                str(link.get("lost", 0)), str(link.get("restarts", 0)), link.get("last_error", ""),
            )  # fmt: skip
    ways = ways_table((feed.get("links") or {}).get("rows") or [])
    refused = ", ".join(f"{k}: {v}" for k, v in feed.get("rejections", {}).items()) or "none"
    tables = [t for t in (links, ways) if t.row_count]
    return Group(title, who, nodes, *tables, Text(f"Refused: {refused}"))


def _num(value: Any, plus: bool = False) -> str:
    return "–" if value is None else f"{value:+.2f}" if plus else f"{value:.2f}"


def ways_table(rows: list[dict[str, Any]]) -> Table:
    """Each link's one-way delays (a is the end that connects out), as the conductor keeps them."""
    table = Table(title="Audio links, each way (ms)", title_justify="left")
    columns = (
        "link",
        "a→b",
        "b→a",
        "± clock",
        "jitter a→b",
        "jitter b→a",
        "round trip",
        "check",
        "queue a→b",
        "queue b→a",
    )
    for column in (*columns, "lost", "underruns", "overflows"):
        table.add_column(column)
    for r in rows:
        queues = [
            "–" if r.get(f"queue_{w}") is None else f"{r[f'queue_{w}']} ({r[f'queue_{w}_ms']:.1f} ms)"
            for w in ("a_to_b", "b_to_a")
        ]
        check = r.get("check_ms")
        table.add_row(
            r["link"], _num(r.get("a_to_b_ms")), _num(r.get("b_to_a_ms")), _num(r.get("bound_ms")),
            _num(r.get("jitter_a_to_b_ms")), _num(r.get("jitter_b_to_a_ms")), _num(r.get("rtt_ms")),
            Text(_num(check, plus=True), style="" if r.get("check_ok", True) else "bold red"),
            *queues, str(r.get("lost", 0)), str(r.get("underruns", 0)), str(r.get("overflows", 0)),
        )  # fmt: skip
    return table


def link_of(link: dict[str, Any] | None) -> Text:
    """A node's Link session: tempo, other peers, phase error (red past a millisecond)."""
    if not link:
        return Text("off")
    text = f"{link['tempo']:.2f} bpm, {link['peers']} peers, {link['phase_error_ms']:+.2f} ms"
    return Text(text, style="red" if abs(link["phase_error_ms"]) > 1 or link.get("late") else "")


async def run(url: str, token: str, once: bool, output: str | None, ca: str | None = None) -> int:
    """Draw the dashboard until interrupted (or once, into ``output`` or the terminal)."""
    # Drawing on (not --once), it waits for the conductor and joins again whenever let go.
    client = TuttiClient(url, "conductor", token, name="tutti status", ca=ca, rejoin=not once)
    feeds: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    client.sio.on(protocol.CLIENTS, feeds.put)
    await client.connect()  # refused or unreachable: ``tutti`` says so in one line, with what to do
    try:
        if once:
            feed = await asyncio.wait_for(feeds.get(), 5)
            with open(output, "w") if output else contextlib.nullcontext() as file:  # noqa: ASYNC230 (once)
                Console(file=file, width=140).print(render(client, feed))
            return 0
        with Live(auto_refresh=False) as live:
            while True:
                live.update(render(client, await feeds.get()), refresh=True)
    finally:
        await client.close()
