"""The dress rehearsal: ``deploy/four-rivers.yaml`` rendered and brought up as separate IPv6 hosts.

``tutti deploy rehearse``'s harness (``conductor/tools/rehearse.py``) makes a network namespace per
machine of the deployment (the conductor, the hub, one per campus) with the file's own addresses on
one bridge, and runs there what each machine's rendered units and the hub's compose file say;
``bench/rehearsal.py`` holds what this test and the bench share, and prints the figures.
Needs root, jackd, scsynth, jacktrip and Chromium.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from playwright.async_api import Browser

from bench.rehearsal import BOUND, CONCERT, check, cue_heard, links_measured, rehearsed, restart, until_green
from conductor.core.concert import load_concert
from conductor.core.deployment import RehearsalSettings
from conductor.core.preflight import concert_rows, node_rows
from conductor.core.yamlcheck import InvalidFile
from conductor.tools.check import jack_name
from conductor.tools.rehearse import _unit_fields
from conductor.tools.wan import Lag
from tests.test_node import XRUN_REACH

# Generous bounds for a busy shared machine; bench/rehearsal.py prints the figures (the issue's
# targets: all green 30 s after the last process starts, 5 s after a host's restart).
GREEN_WITHIN = 60.0
RECOVER_WITHIN = 30.0
TOGETHER = 0.001  # seconds: a cue heard at each campus against its target


@pytest.mark.integration
async def test_four_rivers_as_six_ipv6_hosts_goes_green_checks_go_plays_together_and_recovers(
    tmp_path: Path, browser: Browser
) -> None:
    async with rehearsed(tmp_path) as (rehearsal, boss):
        assert len(rehearsal.hosts) == 6  # conductor, hub, ucas, ccom, pku, whcm
        last = max(u.starts[-1] for u in rehearsal.units)
        await until_green(rehearsal, max(1.0, GREEN_WITHIN - (time.monotonic() - last)))

        # On every host, `tutti deploy check` says go; the console shows the same table, all go.
        checks = asyncio.gather(*(check(rehearsal, host) for host in rehearsal.hosts))
        context = await browser.new_context(ignore_https_errors=True)  # its certificate names [2001:db8:10::1]
        page = await context.new_page()
        await page.goto(f"{rehearsal.console_url}/console?token={rehearsal.token('conductor')}")
        await page.wait_for_function(
            "document.querySelector('#preflight-summary').textContent.startsWith('GO: all')", timeout=30_000
        )
        table = await page.inner_text("#preflight")
        for name in ("ucas-1", "ccom-1", "pku-1", "whcm-1"):
            assert f"{name}: scsynth" in table and f"{name}: clock" in table and f"{name}: JackTrip" in table, table
        assert "NO-GO" not in table and "hub: JackTrip hub" in table, table
        links = await page.inner_text("#links")
        assert links.count("connected") == 5, links
        await context.close()
        said = await checks
        for host, (code, text, _) in zip(rehearsal.hosts, said, strict=True):
            assert code == 0 and "GO: all" in text, f"{host}:\n{text}"
        for row in ("certificate verified", "SynthDefs loaded", "round trip", "port udp/4464"):
            assert row in "".join(text for _, text, _ in said), row

        # A cue played together, recorded at each campus by a recorder on its own host; played
        # again if xruns left fewer than three campuses to hold to the millisecond.
        judged, plays = 0, 0
        while judged < 3 and plays < 3:
            heard, plays = await cue_heard(rehearsal, boss), plays + 1
            for name, h in heard.items():
                assert len(h["cue"]) == 1, f"{name} heard {h}"
                assert abs(h["cue"][0]) < BOUND, f"{name}: {h}"
                # scsynth's clock starts again at an xrun: the node allows for it in cues sent after it.
                if not any(-XRUN_REACH < x < 0.05 for x in h["xruns"]):
                    assert abs(h["cue"][0]) < TOGETHER, f"{name}: {h}"
                    judged += 1
        assert judged >= 3, heard

        # A campus's node agent killed (its scsynth and jacktrip go with it): its unit starts it
        # again, and it joins the conductor and the hub again.
        back, green = await restart(rehearsal, rehearsal.deployment.sites["pku"].nodes[0].host, RECOVER_WITHIN)
        assert back < 2.0 and green < RECOVER_WITHIN, (back, green)


# One-way ms from each campus to the conductor and hub's site; whcm's two ways differ.
DELAYS = RehearsalSettings.model_validate({"delays": {"ucas": 4, "ccom": 8, "pku": 12, "whcm": {"to": 20, "back": 4}}})
SLACK_MS = 1.5  # below a configured delay: the measuring impulse's own timing, and the clocks'


@pytest.mark.integration
async def test_four_rivers_with_each_campus_delay_measures_them_on_every_link(tmp_path: Path) -> None:
    async with rehearsed(tmp_path, DELAYS, f"t20b-{os.getpid()}") as (rehearsal, _):
        assert rehearsal.router is not None
        lags = rehearsal.lags()
        assert lags["pku-1", "hub"] == Lag(0.012) and lags["whcm-1", "pku-1"] == Lag(0.032)
        assert lags["conductor", "hub"] == Lag(0.0) and lags["hub", "whcm-1"] == Lag(0.004)
        table = rehearsal.delay_table()  # what `tutti deploy rehearse` prints: from each row's host to each column's
        assert table[0].split()[-6:] == ["conductor", "hub", "ucas-1", "ccom-1", "pku-1", "whcm-1"], table
        assert next(row for row in table if row.startswith("whcm-1")).split()[1:] == ["20", "20", "24", "28", "32", "-"]
        # All green, each campus's clock off by half its asymmetry (bench/rehearsal.py's clock_skews).
        await until_green(rehearsal, GREEN_WITHIN)
        measured = await links_measured(rehearsal, GREEN_WITHIN)
        trips = {site: m["rtt"] for site, m in measured.items()}
        for site, m in measured.items():
            campus, up, down = DELAYS.campus(site), m["up"], m["down"]
            # The round trip and the two ways hold the configured delays (and jacktrip's queues besides).
            assert trips[site] >= campus.to + campus.way_back, (site, trips)
            assert up + down >= campus.to + campus.way_back - SLACK_MS, (site, up, down)
            if campus.to == campus.way_back:  # whcm's ways each carry its clock's error (half the asymmetry)
                assert min(up, down) >= campus.to - SLACK_MS, (site, up, down)
        # Two campuses on queue-4 links, 4 and 12 ms away: 16 ms between their round trips, give or
        # take their jitter buffers, which move by periods (once here 8 ms at the first measurement):
        # measured again until the distance shows.
        deadline = time.monotonic() + GREEN_WITHIN
        while trips["pku"] - trips["ucas"] <= 8 and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            trips = {site: m["rtt"] for site, m in (await links_measured(rehearsal, GREEN_WITHIN)).items()}
        assert trips["pku"] - trips["ucas"] > 8, trips
        assert rehearsal.router.counts.forwarded > 0 and rehearsal.router.dropped() == "", rehearsal.router.counts


@pytest.mark.unit
def test_the_go_no_go_rows_say_what_to_fix() -> None:
    healthy = {
        "name": "ucas-1", "role": "node", "parts": ["yongding"],
        "health": {"up": True, "synthdefs": 4, "samples": 40, "offset": 0.0002, "error": 0.0003,
                   "links": [{"site": "ucas", "role": "client", "state": "connected", "latency_ms": 21.3}]},
    }  # fmt: skip
    assert all(row.go for row in node_rows(healthy))
    unsettled = {**healthy, "health": {**healthy["health"], "samples": 3, "synthdefs": 0}}
    rows = {row.what: row for row in node_rows(unsettled)}
    assert not rows["ucas-1: clock"].go and not rows["ucas-1: scsynth"].go
    # A campus 12 ms away: its bound is half the round trip, settled all the same; a path too long
    # to play over is no-go.
    far = {**healthy, "health": {**healthy["health"], "error": 0.01265}}
    row = {row.what: row for row in node_rows(far)}["ucas-1: clock"]
    assert row.go and "long path" in row.detail
    too_far = {**healthy, "health": {**healthy["health"], "error": 0.08}}
    assert not {row.what: row for row in node_rows(too_far)}["ucas-1: clock"].go
    assert "tutti synths build" in rows["ucas-1: scsynth"].fix
    parts = [("yongding", "ucas"), ("liangma", "ccom"), ("browsers", None)]
    rows = {row.what: row for row in concert_rows([healthy], parts, None)}
    assert rows["part yongding: node"].go and not rows["part liangma: node"].go
    assert "part browsers: node" not in rows  # a part of no site needs no node
    assert "site ccom" in rows["part liangma: node"].fix
    # Audio flows but the measuring channel does not come back: the row says what was heard and why.
    link = {"site": "ucas", "role": "client", "state": "connected", "impulses_sent": 12, "impulses_heard": 0}
    silent = {**healthy, "health": {**healthy["health"], "links": [link]}}
    row = node_rows(silent)[-1]
    assert not row.go and "12 impulses sent, 0 heard" in row.detail and "looping the measuring channel" in row.fix
    unpatched = {**silent, "health": {**silent["health"], "links": [{**link, "probe_error": "cannot patch it"}]}}
    assert node_rows(unpatched)[-1].fix == "cannot patch it"


@pytest.mark.unit
def test_a_rendered_unit_is_read_as_systemd_reads_it() -> None:
    fields = _unit_fields(
        "[Unit]\nAfter=network-online.target\n[Service]\nEnvironment=JACK_NO_AUDIO_RESERVATION=1\n"
        "ExecStart=/usr/bin/jackd -R -n tutti-ucas-1 -d alsa -d hw:USB -r 48000 -p 128 -n 2\nRestart=always\n"
    )
    assert fields["ExecStart"] == ["/usr/bin/jackd -R -n tutti-ucas-1 -d alsa -d hw:USB -r 48000 -p 128 -n 2"]
    assert fields["Environment"] == ["JACK_NO_AUDIO_RESERVATION=1"] and fields["Restart"] == ["always"]
    assert jack_name("tutti-ucas-1", "t20-7") == "t20-7-ucas-1" and jack_name("tutti-ucas-1", None) == "tutti-ucas-1"


@pytest.mark.unit
def test_a_rehearsal_section_gives_each_pair_of_campuses_its_delay_and_bad_ones_are_named(tmp_path: Path) -> None:
    pair = DELAYS.pair
    assert pair("pku", None) == (12, 0) and pair(None, "whcm") == (4, 0) and pair("whcm", None) == (20, 0)
    assert pair("whcm", "ucas") == (24, 0) and pair("ucas", "whcm") == (8, 0) and pair("ccom", "ccom") == (0, 0)
    assert pair("elsewhere", None) == (0, 0)  # a campus not named is beside the conductor
    jittery = RehearsalSettings.model_validate(
        {"delays": {"pku": {"to": 3, "jitter": 1}, "ccom": {"to": 2, "jitter": 2}}}
    )
    assert jittery.pair("pku", "ccom") == (5, 3)
    text = CONCERT.read_text().replace("../scores/", f"{CONCERT.parent.parent}/scores/").split("\nrehearsal:")[0]
    text = text.replace("ca: four-rivers-ca.pem", "ca: null")
    bad = {
        "{delays: {mit: 3}}": "rehearsal.delays.mit: no site 'mit' in the deployment",
        "{delays: {pku: -1}}": "rehearsal.delays.pku: Input should be greater than or equal to 0",
        "{delays: {pku: {to: 5, bak: 3}}}": "rehearsal.delays.pku.bak: unknown field",
        "{delays: {pku: .inf}}": "rehearsal.delays.pku",
        "{delays: {pku: true}}": "rehearsal.delays.pku",
        "{delays: {pku: {to: 5, jitter: 500}}}": "rehearsal.delays.pku.jitter: Input should be less than or equal",
    }
    for section, said in bad.items():
        path = tmp_path / "concert.yaml"
        path.write_text(
            text.split("\nrehearsal:")[0].replace("ca: four-rivers-ca.pem", "ca: null") + f"\nrehearsal: {section}\n"
        )
        with pytest.raises(InvalidFile) as e:
            load_concert(path, resolve_tokens=False)
        line = str(e.value).splitlines()[0]
        assert line.startswith(f"{path}:") and said in line, line
