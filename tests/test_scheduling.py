"""Delay-aware scheduling: three sites behind emulated links, cues fired together, late cues by rule.

Three node agents, each with its own scsynth on one JACK server (so one recorder hears them all),
reach the conductor through TCP proxies that add 2, 15 and 40 ms (plus up to 5 ms of jitter).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser

from conductor.client import TuttiClient
from conductor.core.scheduler import Lookahead, audio_delays, moved
from conductor.core.score import Aligned, load_score
from conductor.node.jackio import Recorder
from conductor.node.scsynth import start_jack
from conductor.tools.emulate import TcpDelayProxy, UdpDelayProxy
from tests.conftest import TOKENS, ConductorProcess, udp_ports, write_concert
from tests.test_node import XRUN_REACH, node_health, start_node, stop_node, until

DELAYS = {"a": 0.002, "b": 0.015, "c": 0.040}
JITTER = 0.005
TOGETHER = [1.0 + 0.5 * k for k in range(8)]
CLICK = "[tutti_click, -1, 0, 0]"
LATE = {"skip": 6.0, "play": 6.5, "next_beat": 7.0}  # after those: cues for site c only, one per rule
SCORE = (
    "title: Three sites\nduration: 60\ntempo: {bpm: 120}\nparts:\n"
    + "".join(f"  - {{id: p{s}, name: P{s}, site: {s}}}\n" for s in DELAYS)
    + "cues:\n"
    + "".join(f"  - {{at: {at}, target: all, address: /s_new, args: {CLICK}}}\n" for at in TOGETHER)
    + "".join(
        f"  - {{at: {at}, target: site:c, late: {r}, address: /s_new, args: {CLICK}}}\n" for r, at in LATE.items()
    )
)


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    (tmp_path / "score.yaml").write_text(SCORE)
    # max_lookahead: the late-cue test slows one site to 0.6 s, and the lookahead is to follow it.
    concert = write_concert(tmp_path, score=tmp_path / "score.yaml", lookahead=0.01, max_lookahead=2.0)
    conductor = ConductorProcess(concert)
    host, port = conductor.url.removeprefix("http://").split(":")
    server = f"tutti-sched-{os.getpid()}"
    jackd = await start_jack(server)
    proxies = {
        s: TcpDelayProxy(host, int(port), delay=d, jitter=JITTER, seed=i) for i, (s, d) in enumerate(DELAYS.items())
    }
    agents = []
    recorder = None
    ports = udp_ports(len(DELAYS))
    try:
        for port, (site, proxy) in zip(ports, proxies.items(), strict=True):
            await proxy.start()
            via = f"http://127.0.0.1:{proxy.port}"  # the node sees the conductor through its link
            agents.append(await start_node(via, f"n{site}", site, port, server, "--no-jack"))
        for site in DELAYS:
            await until(lambda s=site: settled(conductor, f"n{s}"), 60, f"{site}'s clock never settled")
        recorder = Recorder(server, "recorder-sched", ports=3)
        for i, site in enumerate(DELAYS):
            recorder.listen_to(f"scsynth-n{site}:out_1", i)
        yield {"conductor": conductor, "proxies": proxies, "recorder": recorder, "ports": ports}
    finally:
        if recorder:
            recorder.close()
        for agent in agents:
            await stop_node(agent)
        for proxy in proxies.values():
            await proxy.close()
        conductor.stop()
        jackd.terminate()
        await jackd.wait()


def settled(conductor: ConductorProcess, name: str) -> bool:
    """Whether a node's clock is within half a millisecond of the conductor's: here both read one
    system clock, so the true offset is known. In a concert, nodes join long before the piece."""
    health = node_health(conductor, name)
    truth = conductor.status()["clock_minus_wall"]
    return health.get("samples", 0) >= 32 and abs(health.get("offset", 1.0) - truth) < 0.0005


async def play(conductor: ConductorProcess) -> tuple[TuttiClient, float]:
    """Play from the top; returns the conductor and the wall-clock time of score position 0."""
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    await boss.connect()
    assert (await boss.command("play"))["ok"]
    status = conductor.status()
    return boss, status["state"]["segments"][-1]["t"] - status["clock_minus_wall"]


async def test_cues_sound_together_at_three_sites_and_the_lookahead_follows_the_jitter(
    sites: dict[str, Any], browser: Browser
) -> None:
    conductor: ConductorProcess = sites["conductor"]
    recorder: Recorder = sites["recorder"]
    lookahead = conductor.status()["lookahead"]
    # Computed from the slowest site (40 ms + jitter), not the concert's 10 ms floor; on the console.
    assert lookahead["worst"] == "nc" and 0.045 < lookahead["value"] < 0.15, lookahead
    page = await browser.new_page()
    await page.goto(f"{conductor.url}/console?token={TOKENS['conductor']}")
    await page.wait_for_function("document.querySelector('#lookahead').innerText.includes('set by nc')")

    boss, zero = await play(conductor)
    try:
        await asyncio.sleep(zero + TOGETHER[-1] + 0.5 - time.time())
        heard = [[o.time for o in recorder.onsets(port=i)] for i in range(3)]
        for site, onsets in zip(DELAYS, heard, strict=True):
            assert len(onsets) == len(TOGETHER), (site, [t - zero for t in onsets])
        raw, off = [], []
        for k, at in enumerate(TOGETHER):
            cues = [h[k] for h in heard]
            raw.append(max(cues) - min(cues))
            # scsynth's clock starts again at an xrun; the nodes allow for it in cues sent after it
            if not any(zero + at - XRUN_REACH < x < zero + at + 0.05 for x in recorder.xruns):
                off.append(max(abs(c - zero - at) for c in cues))
        print("spread per cue as heard, ms:", " ".join(f"{s * 1000:.3f}" for s in raw))
        print("furthest from its time per cue, ms:", " ".join(f"{s * 1000:.3f}" for s in off))
        assert len(off) >= 2, f"xruns at {recorder.xruns} left {len(off)} cues to judge"

        # A cue that reached its node after its time (a starved process on a busy machine) sounds
        # at once: the node counts it, and only as many cues as were counted may be off.
        def reports() -> list[dict[str, Any]]:
            return [c["health"] or {} for c in conductor.status()["clients"] if c["role"] == "node"]

        print(
            "each node's allowance for where its scsynth places cues, ms:", [h.get("placement_ms") for h in reports()]
        )

        await until(lambda: all(h.get("cues", 0) >= len(TOGETHER) for h in reports()), 5, "cues not reported")
        late = sum(h.get("cues_late", 0) for h in reports())
        assert late <= 2, f"{late} cues arrived late"
        assert sorted(off)[len(off) - late - 1] < 0.001, [f"{s * 1000:.3f} ms" for s in off]
        assert sorted(raw)[len(raw) - late - 1] < 0.01, [f"{s * 1000:.3f} ms" for s in raw]  # a relay: 38 ms

        # Jitter rises on the way to c: the lookahead grows to cover it.
        sites["proxies"]["c"].jitter = 0.08
        await until(lambda: conductor.status()["lookahead"]["value"] > lookahead["value"] + 0.04, 20, "no growth")
    finally:
        await boss.close()


async def test_late_cues_follow_the_score_s_rule_and_are_counted(sites: dict[str, Any]) -> None:
    conductor: ConductorProcess = sites["conductor"]
    recorder: Recorder = sites["recorder"]
    before = conductor.status()["lookahead"]["value"]
    boss, zero = await play(conductor)
    try:
        # After the cues for everyone, site c's link slows to 0.6 s: its own cues arrive after their time.
        await asyncio.sleep(zero + TOGETHER[-1] + 0.5 - time.time())
        sites["proxies"]["c"].delay = 0.6
        await until(
            lambda: node_health(conductor, "nc").get("cues_late", 0) >= 3, 15, "the late cues were not reported"
        )
        await asyncio.sleep(zero + LATE["next_beat"] + 2.0 - time.time())
        health = node_health(conductor, "nc")
        assert (health["cues_late"], health["cues_skipped"], health["cues_moved"]) == (3, 1, 1), health
        heard = [o.time - zero for o in recorder.onsets(port=2) if o.time - zero > TOGETHER[-1] + 0.5]
        assert len(heard) == 2, heard  # the skipped cue made no sound
        played, moved = heard
        assert LATE["play"] + 0.3 < played < LATE["next_beat"] + 0.3, heard  # played as it came, late
        beats = (moved - LATE["next_beat"]) / 0.5  # 120 bpm: a beat is 0.5 s
        assert round(beats) >= 1 and abs(beats - round(beats)) * 0.5 < 0.01, heard  # on a later beat
        # The lookahead grew, and will shrink again slowly.
        status = conductor.status()["lookahead"]
        assert status["boost"] > 0 and status["value"] > before, status
    finally:
        sites["proxies"]["c"].delay = DELAYS["c"]
        await boss.close()


# --- without processes ------------------------------------------------------------------------


def test_the_lookahead_is_the_worst_delay_with_a_margin_and_late_cues_add_to_it() -> None:
    lookahead = Lookahead(floor=0.02)
    assert lookahead.update({}, 0.0) == 0.02
    assert lookahead.update({"near": 0.003, "far": 0.048}, 0.0) == pytest.approx(0.048 * 1.25 + 0.01)
    assert lookahead.worst == "far"
    lookahead.late(2)
    grown = lookahead.update({"far": 0.048}, 0.0)
    assert grown == pytest.approx(0.07 + 0.04)
    assert lookahead.update({"far": 0.048}, 60.0) == pytest.approx(0.07 + 0.02)  # half of it gone a minute later


def test_a_slow_node_is_followed_up_to_the_ceiling_and_a_slow_performer_page_is_not() -> None:
    lookahead = Lookahead(floor=0.02, ceiling=0.3)
    delays = {"na": 0.002, "nb": 0.015, "nc": 0.12, "page": 0.003}
    assert lookahead.update(delays, 0.0, nodes={"na", "nb", "nc"}) == pytest.approx(0.12 * 1.25 + 0.01)
    assert lookahead.worst == "nc" and not lookahead.ignored
    # the same delay from a performer's page: an outlier, drawn late on its own
    assert lookahead.update(delays, 0.0, nodes={"na", "nb"}) == pytest.approx(0.015 * 1.25 + 0.01)
    assert lookahead.ignored == ("nc",)
    # past the ceiling, not even a node is followed: it would hold everyone back
    assert lookahead.update({**delays, "nc": 0.5}, 0.0, nodes={"na", "nb", "nc"}) < 0.3
    assert lookahead.ignored == ("nc",)


def test_a_node_driving_ableton_link_gets_its_link_lead_for_changes_of_the_transport() -> None:
    lookahead = Lookahead(floor=0.05, ceiling=0.3)
    delays = {"near": 0.002, "far": 0.040}
    # parameter values do not wait for Link: the far node's delay sets their lookahead
    assert lookahead.update(delays, 0.0, {"near", "far"}, {"near": 0.2}) == pytest.approx(0.04 * 1.25 + 0.01)
    # the transport reaches the near node's Link session 0.2 s before it sounds
    assert lookahead.transport == pytest.approx(0.002 * 1.25 + 0.01 + 0.2)
    # a lead past the ceiling gets the ceiling (the node counts its changes late and says so)
    lookahead.update(delays, 0.0, {"near", "far"}, {"near": 0.5})
    assert lookahead.transport == 0.3 and lookahead.value == pytest.approx(0.04 * 1.25 + 0.01)


def test_audio_delays_to_a_site_through_the_hub_and_through_a_pair() -> None:
    links = [
        {"site": "ucas", "role": "hub", "peer": ""},
        {"site": "ccom", "role": "client", "peer": "ucas", "latency_ms": 20.0},
        {"site": "pku", "role": "client", "peer": "ucas", "latency_ms": 30.0},
        {"site": "pku", "role": "p2p client", "peer": "whcm", "latency_ms": 8.0},
    ]
    period = 0.002  # each round trip holds one, in the far end's JACK loop
    assert audio_delays(links, "ccom", period) == pytest.approx({"ucas": 0.009, "pku": 0.023})
    assert audio_delays(links, "ucas", period) == pytest.approx({"ccom": 0.009, "pku": 0.014})
    assert audio_delays(links, "whcm", period) == pytest.approx({"pku": 0.003})


@pytest.mark.unit
def test_a_delay_that_moves_by_more_than_a_period_is_replanned() -> None:
    before = {"pku": {"ucas": 0.020, "ccom": 0.030}}
    after = {"pku": {"ucas": 0.0215, "ccom": 0.0333, "whcm": 0.01}, "ucas": {"pku": 0.01}}
    assert moved(before, after, 0.00267) == [("pku", "ccom", 0.030, 0.0333)]


@pytest.mark.unit
def test_audio_delays_take_each_direction_as_measured_over_half_the_round_trip() -> None:
    links = [
        {"site": "ucas", "role": "hub", "peer": "", "way_in_ms": {"ccom": 4.0}},
        {"site": "ccom", "role": "client", "peer": "ucas", "latency_ms": 20.0, "way_in_ms": {"ucas": 14.0}},
        {"site": "pku", "role": "client", "peer": "ucas", "latency_ms": 30.0},  # one way not measured yet
        {"site": "pku", "role": "p2p client", "peer": "whcm", "latency_ms": 8.0, "way_in_ms": {"whcm": 1.5}},
        {"site": "whcm", "role": "p2p server", "peer": "pku", "way_in_ms": {"pku": 4.5, "x": float("nan")}},
    ]
    period = 0.002
    assert audio_delays(links, "ucas", period) == pytest.approx({"ccom": 0.004, "pku": 0.014})
    assert audio_delays(links, "ccom", period) == pytest.approx({"ucas": 0.014, "pku": 0.014 + 0.014})
    assert audio_delays(links, "pku", period) == pytest.approx({"ucas": 0.014, "ccom": 0.004 + 0.014, "whcm": 0.0015})
    assert audio_delays(links, "whcm", period)["pku"] == pytest.approx(0.0045)


def test_a_cue_s_schedule_comes_from_itself_its_section_or_the_score(tmp_path: Path) -> None:
    path = tmp_path / "score.yaml"
    path.write_text(
        "title: T\nduration: 60\nschedule: immediate\nlate: skip\nparts:\n  - {id: a, name: A, site: ucas}\n"
        "sections:\n  - {id: one, start: 0}\n  - {id: two, start: 10, schedule: {aligned: ucas}, late: next_beat}\n"
        "cues:\n  - {at: 1, address: /a}\n  - {at: 11, address: /b}\n  - {at: 12, address: /c, schedule: together}\n"
    )
    score = load_score(path).score
    assert [score.policy(c) for c in score.cues] == [
        ("immediate", "skip"),
        (Aligned(aligned="ucas"), "next_beat"),
        ("together", "next_beat"),
    ]


PARAMETERS = """\
title: Parameters
duration: 60
parts:
  - id: a
    name: A
    site: ucas
    controls: [{type: fader, id: now, param: now}, {type: fader, id: soon, param: soon}]
parameters:
  - {id: now, n_set: {control: amp}, schedule: immediate}
  - {id: soon, n_set: {control: amp}}
  - {id: there, n_set: {control: amp}, schedule: {aligned: ucas}}
"""


async def test_parameters_and_performer_controls_follow_their_schedule(tmp_path: Path) -> None:
    """A parameter's changes are timed by its schedule, whoever makes them: a performer or the conductor."""
    (tmp_path / "score.yaml").write_text(PARAMETERS)
    conductor = ConductorProcess(write_concert(tmp_path, score=tmp_path / "score.yaml", lookahead=0.3))
    node = TuttiClient(conductor.url, "node", TOKENS["node"], site="ucas", name="n")
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    player = TuttiClient(conductor.url, "performer", TOKENS["performer"], part="a")
    cues: list[dict[str, Any]] = []

    async def heard(batch: dict[str, Any]) -> None:
        cues.extend(batch["cues"])

    node.sio.on("cues", heard)
    try:
        for client in (node, boss, player):
            await client.connect()
        await until(lambda: len(cues) == 3, 5, "a joining node is sent each parameter's value")
        assert all(cue["t"] is None for cue in cues)
        cues.clear()
        before = boss.now()
        now = await player.sio.call("control", {"id": "now", "value": 0.5}, timeout=5)
        soon = await player.sio.call("control", {"id": "soon", "value": 0.5}, timeout=5)
        there = await boss.command("param", name="there", value=0.5)
        await until(lambda: len(cues) == 3, 5, "a cue for each change")
        assert before <= now["t"] < before + 0.1, (before, now)  # immediate: no lookahead
        assert cues[0]["t"] is None and cues[0]["align"] is None  # ... and set when it arrives
        assert soon["t"] >= before + 0.3 and cues[1]["t"] == soon["t"] and cues[1]["align"] is None  # together
        # aligned at ucas: each node plays early by its audio delay to ucas (none measured here)
        assert there["t"] >= before + 0.3 and cues[2]["t"] == there["t"] and cues[2]["align"] == {}
    finally:
        for client in (node, boss, player):
            await client.close()
        conductor.stop()


@pytest.mark.unit
def test_a_link_s_way_back_follows_its_delay_unless_it_has_its_own() -> None:
    link = TcpDelayProxy("127.0.0.1", 9, delay=0.01)
    link.delay, link.jitter = 0.6, 0.0  # a test slows a site's link: both ways, as before
    assert link.lag(back=True) == link.lag() == 0.6
    own = TcpDelayProxy("127.0.0.1", 9, delay=0.003, delay_back=0.02, jitter_back=0.0)
    own.delay = 0.5
    assert (own.lag(), own.lag(back=True)) == (0.5, 0.02)


async def test_the_udp_link_delays_and_loses_datagrams() -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.setblocking(False)
    loop = asyncio.get_running_loop()

    async def answer() -> None:
        while True:
            data, addr = await loop.sock_recvfrom(echo, 100)
            echo.sendto(data, addr)

    server = asyncio.create_task(answer())
    proxy = UdpDelayProxy("127.0.0.1", echo.getsockname()[1], delay=0.02, jitter=0.01, loss=0.2, seed=1)
    await proxy.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    sent = {}
    for k in range(100):
        sent[k] = time.monotonic()
        client.sendto(k.to_bytes(2, "big"), ("127.0.0.1", proxy.port))
    trips = {}
    try:
        async with asyncio.timeout(1.0):
            while True:
                data = await loop.sock_recv(client, 100)
                trips[int.from_bytes(data, "big")] = time.monotonic() - sent[int.from_bytes(data, "big")]
    except TimeoutError:
        pass
    server.cancel()
    await proxy.close()
    echo.close(), client.close()
    assert 50 < len(trips) < 80  # 0.8 × 0.8 = 64 % survive both ways
    assert proxy.lost == 100 - len(trips)
    assert all(0.04 <= t < 0.08 for t in trips.values()), sorted(trips.values())[-3:]  # two legs of 20-30 ms
