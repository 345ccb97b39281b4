"""Go or no-go before the downbeat: what the conductor knows of every node, as rows that say what to fix.

The console shows these rows (``ConsoleFeed.preflight``), and ``tutti deploy check`` on a machine
shows its own nodes' rows beside what it probes there itself (the conductor over its URL, JACK,
scsynth, the plan's ports).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from conductor.core.audio import AudioSettings
from conductor.core.protocol import PreflightRow

CLOCK_BOUND = 0.001  # seconds: a node's clock error bound on the conductor's own network
CLOCK_FAR = 0.05  # seconds: the bound of a path whose round trip (100 ms) is too long to play over
CLOCK_SAMPLES = 8  # clock exchanges before a node's estimate is trusted


def scsynth_fix(node: str) -> str:
    return (
        f"see `journalctl -u tutti-node-{node}`; `tutti synths build` if no SynthDefs are loaded;"
        f" if scsynth runs but does not answer, its JACK server is stuck: `systemctl restart tutti-jack-{node}`"
    )


def node_rows(node: dict[str, Any]) -> list[PreflightRow]:
    """One node's rows: scsynth with its SynthDefs, its clock, each JackTrip end it runs."""
    name = node["name"]
    health = node.get("health") or {}
    rows = []
    if health.get("synth", True):
        defs = health.get("synthdefs", 0)
        up = bool(health.get("up"))
        go = up and defs > 0
        detail = f"answering, {defs} SynthDefs loaded" if up else "not answering"
        rows.append(PreflightRow(what=f"{name}: scsynth", go=go, detail=detail, fix="" if go else scsynth_fix(name)))
    samples, error, offset = health.get("samples", 0), health.get("error", 60.0), health.get("offset", 0.0)
    # The error bound is half the quickest round trip: over a long path it cannot be a millisecond
    # (a campus 12 ms away shows ±12 ms however settled), and only the path's asymmetry, which no
    # estimator sees, can put the clock off by that much.
    settled = samples >= CLOCK_SAMPLES and error <= CLOCK_FAR
    detail = f"offset {offset * 1000:+.2f} ms, error ±{error * 1000:.2f} ms ({samples} exchanges)"
    if settled and error > CLOCK_BOUND:
        detail += ": half the round trip of a long path, off only by its asymmetry"
    fix = "wait for more exchanges; a busy or lossy network path keeps the error high"
    rows.append(PreflightRow(what=f"{name}: clock", go=settled, detail=detail, fix="" if settled else fix))
    for link in health.get("links", []):
        hub = link["role"] == "hub"
        trip = link.get("latency_ms")
        # A hub measures nothing itself: each site's end measures its round trip through it.
        go = link["state"] == "connected" and (hub or trip is not None)
        detail = link["state"] + ("" if trip is None else f", round trip {trip:.2f} ms")
        if hub:
            detail += f", {link.get('peers', 0)} sites joined"
        elif trip is None and link["state"] == "connected":
            sent, heard = link.get("impulses_sent", 0), link.get("impulses_heard", 0)
            detail += f", not measured yet: {sent} impulses sent, {heard} heard"
        end = "hub" if hub else f"{link['site']} {link['role']} of {link.get('peer') or 'the hub'}"
        what = f"{name}: JackTrip {end}"
        if go:
            fix = ""
        elif hub and not link.get("peers"):  # each site joins again after a few silent seconds
            fix = "wait a few seconds for the sites to join; if none does, check their node agents and the hub's ports"
        elif link["state"] == "connected" and not hub:  # audio flows, the measuring channel does not come back
            fix = link.get("probe_error") or (
                "wait a few seconds; if nothing is heard, the far end's node agent is not looping the"
                " measuring channel back (it patches it while it runs): check it and its JACK server"
            )
        else:
            fix = link.get("last_error") or "check the hub's ports (PLAN.txt) and that jacktrip runs"
        rows.append(PreflightRow(what=what, go=go, detail=detail, fix=fix))
    return rows


def concert_rows(
    clients: Iterable[dict[str, Any]], parts: list[tuple[str, str | None]], audio: AudioSettings | None
) -> list[PreflightRow]:
    """The console's table: every part sounded by a node, every node's rows, every audio end reported."""
    nodes = [c for c in clients if c["role"] == "node"]
    rows = []
    for part, site in parts:
        if site is None:  # a part of no site may be played in browsers alone
            continue
        players = [n["name"] for n in nodes if part in (n.get("parts") or [])]
        rows.append(
            PreflightRow(
                what=f"part {part}: node",
                go=bool(players),
                detail=", ".join(players) or "no node sounds it",
                fix="" if players else f"start the node of site {site} (tutti-node-*.service on its machine)",
            )
        )
    for node in sorted(nodes, key=lambda n: n["name"]):
        rows += node_rows(node)
    reported = {(link["site"], link["role"]) for n in nodes for link in (n.get("health") or {}).get("links", [])}
    if audio is not None:
        wanted = ([(audio.hub.site, "hub")] if audio.hub else []) + [(link.site, "client") for link in audio.links]
        for site, role in wanted:
            if (site, role) not in reported:
                what = f"JackTrip {site} {'hub' if role == 'hub' else 'link'}"
                fix = f"start the node agent of site {site}: it runs this end"
                rows.append(PreflightRow(what=what, go=False, detail="no node reports it", fix=fix))
    return rows
