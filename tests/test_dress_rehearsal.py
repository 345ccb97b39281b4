"""The dress rehearsal: ``deploy/four-rivers.yaml`` rendered and brought up as separate IPv6 hosts.

``tutti deploy rehearse``'s harness (``conductor/tools/rehearse.py``) makes a network namespace per
machine of the deployment (the conductor, the hub, one per campus) with the file's own addresses on
one bridge, and runs there what each machine's rendered units and the hub's compose file say;
``bench/rehearsal.py`` holds what this test and the bench share, and prints the figures.
Needs root, jackd, scsynth, jacktrip and Chromium.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from playwright.async_api import Browser

from bench.rehearsal import BOUND, check, cue_heard, rehearsed, restart, until_green
from conductor.core.preflight import concert_rows, node_rows
from conductor.tools.check import jack_name
from conductor.tools.rehearse import _unit_fields

# Generous bounds for a busy shared machine; bench/rehearsal.py prints the figures (the issue's
# targets: all green 30 s after the last process starts, 5 s after a host's restart).
GREEN_WITHIN = 60.0
RECOVER_WITHIN = 30.0
TOGETHER = 0.001  # seconds: a cue against what a perfect timetag gives on the same scsynth


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

        # A cue played together, recorded at each campus by a recorder on its own host.
        heard = await cue_heard(rehearsal, boss)
        compared = 0
        for name, h in heard.items():
            assert len(h["cue"]) == 1, f"{name} heard {h}"
            assert abs(h["cue"][0]) < BOUND, f"{name}: {h}"
            # scsynth resets its clock filter on an xrun, and the recorder misses an xrun's period.
            if len(h["partner"]) == 1 and not any(abs(x) < 0.05 for x in h["xruns"]):
                assert abs(h["cue"][0] - h["partner"][0]) < TOGETHER, f"{name}: {h}"
                compared += 1
        assert compared >= 3, heard

        # A campus's node agent killed (its scsynth and jacktrip go with it): its unit starts it
        # again, and it joins the conductor and the hub again.
        back, green = await restart(rehearsal, rehearsal.deployment.sites["pku"].nodes[0].host, RECOVER_WITHIN)
        assert back < 2.0 and green < RECOVER_WITHIN, (back, green)


@pytest.mark.unit
def test_the_go_no_go_rows_say_what_to_fix() -> None:
    healthy = {
        "name": "ucas-1", "role": "node", "parts": ["yongding"],
        "health": {"up": True, "synthdefs": 4, "samples": 40, "offset": 0.0002, "error": 0.0003,
                   "links": [{"site": "ucas", "role": "client", "state": "connected", "latency_ms": 21.3}]},
    }  # fmt: skip
    assert all(row.go for row in node_rows(healthy))
    unsettled = {**healthy, "health": {**healthy["health"], "error": 0.004, "synthdefs": 0}}
    rows = {row.what: row for row in node_rows(unsettled)}
    assert not rows["ucas-1: clock"].go and not rows["ucas-1: scsynth"].go
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
