"""Each audio link's row once a second, from the nodes' link reports: what is kept and shown."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
from rich.console import Console
from rich.text import Text

from conductor.core import protocol
from conductor.server.linkmetrics import CONCERT, LinkMetrics, link_rows, metrics_path, queue_needed
from conductor.tools.status import ways_table

PERIOD_MS = 128 / 48000 * 1000
HUB = {"site": "ucas", "role": "hub", "state": "connected", "way_in_ms": {"pku": 9.0}, "way_jitter_ms": {"pku": 0.5}}
PKU = {
    "site": "pku", "role": "client", "peer": "ucas", "state": "connected", "latency_ms": 32.0,
    "way_in_ms": {"ucas": 20.0}, "way_jitter_ms": {"ucas": 3.0}, "lost": 2, "underruns": 1, "overflows": 0,
}  # fmt: skip
PAIR_CLIENT = {"site": "pku", "role": "p2p client", "peer": "whcm", "state": "connected", "lost": 1}
PAIR_SERVER = {"site": "whcm", "role": "p2p server", "peer": "pku", "lost": 4, "way_in_ms": {"pku": 5.0}}


@pytest.mark.unit
def test_a_row_per_link_with_each_direction_its_bound_and_the_round_trip_check() -> None:
    rows = link_rows([(0.0002, [HUB]), (0.0003, [PKU, PAIR_CLIENT]), (None, [PAIR_SERVER])], PERIOD_MS)
    hub, pair = rows
    assert hub["link"] == "pku–ucas" and hub["a_to_b_ms"] == 9.0 and hub["b_to_a_ms"] == 20.0
    assert hub["bound_ms"] == 0.5  # the two ends' clock errors
    assert hub["jitter_a_to_b_ms"] == 0.5 and hub["jitter_b_to_a_ms"] == 3.0
    assert hub["check_ms"] == pytest.approx(32.0 - 9.0 - 20.0 - PERIOD_MS, abs=1e-3) and hub["check_ok"]
    off = link_rows([(0.0, [HUB]), (0.0, [{**PKU, "latency_ms": 40.0}])], PERIOD_MS)[0]
    assert off["check_ok"] is False  # 8.3 ms more than the two ways and the loop back
    assert hub["lost"] == 2 and hub["underruns"] == 1
    # A pair: one direction measured so far, no bound without both clocks; both ends' losses.
    assert pair["link"] == "pku–whcm pair" and pair["a_to_b_ms"] == 5.0 and pair["b_to_a_ms"] is None
    assert pair["bound_ms"] is None and pair["check_ms"] is None and pair["lost"] == 5


@pytest.mark.unit
def test_the_queue_holds_the_spread_of_the_delays() -> None:
    assert queue_needed([10.0], PERIOD_MS) is None
    assert queue_needed([10.0, 10.1], PERIOD_MS) == 2  # never below jacktrip's least
    assert queue_needed([10.0, 10.0 + 2.5 * PERIOD_MS], PERIOD_MS) == 4


@pytest.mark.unit
def test_rows_are_written_and_the_whole_concert_stays_bounded(tmp_path: Path) -> None:
    now = [0.0]
    path = metrics_path(tmp_path / "concert.jsonl")
    assert path.name == "concert.links.jsonl"
    metrics = LinkMetrics(lambda: [(0.0002, [HUB]), (0.0003, [PKU])], path, lambda: now[0], PERIOD_MS)
    for second in range(3 * CONCERT):
        now[0] = float(second)
        rows = metrics.sample()
    metrics._append(rows)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert written[0]["t"] == 3 * CONCERT - 1 and written[0]["queue_b_to_a"] == 2
    feed = metrics.feed()
    assert len(feed["concert"]["pku–ucas"]) <= CONCERT and feed["concert"]["pku–ucas"][-1][0] == 3 * CONCERT - 1
    assert feed["concert"]["pku–ucas"][0][0] < CONCERT  # the start of the concert is still there
    assert len(feed["recent"]["pku–ucas"]) == 300


@pytest.mark.unit
def test_a_node_s_one_way_figures_are_bounded() -> None:
    report = {"site": "pku", "role": "client", "state": "connected", "way_in_ms": {"ucas": 20.0}, "ways_measured": 3}
    assert protocol.LinkReport.model_validate(report).way_in_ms == {"ucas": 20.0}
    for bad in ({"ucas": -1.0}, {"ucas": 1e9}, {"ucas": "20"}, {f"s{i}": 1.0 for i in range(65)}):
        with pytest.raises(pydantic.ValidationError, match="way_in_ms"):
            protocol.LinkReport.model_validate({**report, "way_in_ms": bad})


@pytest.mark.unit
def test_tutti_status_prints_each_way_and_marks_a_failed_check() -> None:
    rows = link_rows([(0.0002, [HUB]), (0.0003, [{**PKU, "latency_ms": 40.0}])], PERIOD_MS)
    table = ways_table(rows)
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "pku–ucas" in text and "9.00" in text and "20.00" in text and "40.00" in text and "+8.33" in text
    [check] = table.columns[7].cells
    assert isinstance(check, Text) and check.style == "bold red"  # the round trip does not add up
