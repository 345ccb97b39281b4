"""``tutti status``'s picture: who is connected by name, the parts nobody plays, and the end."""

from __future__ import annotations

import pytest
from rich.console import Console

from conductor.client import TuttiClient
from conductor.core.score import load_score
from conductor.core.transport import Segment, Transport
from conductor.tools.status import render
from tests.conftest import SCORES

pytestmark = pytest.mark.unit


def test_status_says_ended_and_lists_clients_by_name() -> None:
    client = TuttiClient("http://127.0.0.1:1", "conductor", "x")  # never connected: only its state is drawn
    transport = Transport(load_score(SCORES / "demo.yaml").score)
    transport.segments.set(1.0, Segment(1.0, 170.0, 1.0, True))  # long past the end by now
    client.transport = transport
    feed = {
        "clients": [
            {"name": "Ana", "role": "performer", "part": "drones", "site": None, "rtt": 0.002},
            {"name": "ucas-1", "role": "node", "parts": ["drones", "pulses"], "site": "ucas", "health": {"up": True}},
        ],
        "audience": {"": 12},
        "lookahead": {"value": 0.05},
        "rejections": {},
    }
    console = Console(record=True, width=140)
    console.print(render(client, feed))
    text = console.export_text()
    assert "ended at 3:00.000" in text and "playing" not in text
    assert "Ana" in text and "drones, pulses" in text and "12 in the audience" in text
    assert text.count("nobody") == 2  # pulses and sketch have no performer
