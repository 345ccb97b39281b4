"""Roles and tokens: only the conductor moves the performance; refusals are clear and change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from conductor.client import TuttiClient
from tests.conftest import TOKENS, ConductorProcess, write_concert


@pytest.mark.parametrize(
    ("role", "token", "part", "code"),
    [
        ("conductor", "wrong", None, "bad_token: wrong token for role 'conductor'"),
        ("performer", TOKENS["conductor"], "drones", "bad_token: wrong token for role 'performer'"),
        ("node", "", None, "bad_token"),
        (
            "performer",
            TOKENS["performer"],
            None,
            "unknown_part: a performer needs one of the parts: drones, pulses, sketch",
        ),
        ("performer", TOKENS["performer"], "violin", "unknown_part"),
        ("king", "x", None, "bad_auth"),
    ],
)
async def test_bad_joins_are_refused_with_a_reason(
    conductor: ConductorProcess, role: str, token: str, part: str | None, code: str
) -> None:
    client = TuttiClient(conductor.url, role, token, part=part)
    with pytest.raises(ConnectionError, match=code.replace("(", r"\(")):
        await client.connect()
    await client.sio.disconnect()
    status = conductor.status()
    assert status["clients"] == []
    assert sum(status["rejections"].values()) == 1


async def test_only_the_conductor_moves_the_transport(conductor: ConductorProcess) -> None:
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"], name="boss")
    player = TuttiClient(conductor.url, "performer", TOKENS["performer"], part="pulses", name="p1")
    listener = TuttiClient(conductor.url, "audience", name="a1")  # the demo concert leaves the audience open
    node = TuttiClient(conductor.url, "node", TOKENS["node"], name="n1")
    for c in (boss, player, listener, node):
        await c.connect()
    assert player.you["part"] == "pulses"
    assert {c["role"] for c in conductor.status()["clients"]} == {"conductor", "performer", "audience", "node"}
    for c in (player, listener, node):
        answer = await c.command("play")
        assert answer == {
            "ok": False,
            "code": "forbidden",
            "event": "command",
            "message": f"only the conductor may send commands (you are {c.auth['role']})",
        }
        assert c.errors[-1]["code"] == "forbidden"  # the error event, for clients that do not use acks
    status = conductor.status()
    assert status["state"]["seq"] == 0 and status["rejections"] == {"forbidden": 3}
    assert (await boss.command("play"))["ok"]
    await boss.command("param", name="density", value=0.7)
    for c in (boss, player, listener, node):
        await c.close()
    assert conductor.status()["state"]["seq"] == 2


async def test_an_address_that_keeps_guessing_tokens_is_slowed_but_a_right_token_gets_in(tmp_path: Path) -> None:
    conductor = ConductorProcess(write_concert(tmp_path, host=["127.0.0.1", "::1"]))
    port = conductor.url.rsplit(":", 1)[1]

    async def guess(url: str, code: str) -> None:
        client = TuttiClient(url, "conductor", "guess")
        with pytest.raises(ConnectionError, match=code):
            await client.connect()
        await client.sio.disconnect()

    try:
        for _ in range(10):  # someone guessing tokens from 127.0.0.1
            await guess(conductor.url, "bad_token")
        await guess(conductor.url, r"rate_limited: too many wrong tokens for role 'conductor'")
        right = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
        await right.connect()  # the real console, behind the same address, is never kept out
        await right.close()
        await guess(f"http://[::1]:{port}", "bad_token")  # another address is not slowed
        assert conductor.status()["rejections"] == {"bad_token": 11, "rate_limited": 1}
    finally:
        conductor.stop()
