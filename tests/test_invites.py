"""Per-part performer tokens, and the console's invitations: one QR code per part."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import segno
from playwright.async_api import Browser

from conductor.client import TuttiClient
from conductor.core.concert import load_concert
from conductor.core.yamlcheck import InvalidFile
from tests.conftest import TOKENS, ConductorProcess, write_concert
from tests.test_browser import open_page

PART_TOKENS = {"drones": "t-drones", "pulses": "t-pulses", "sketch": "t-sketch"}


@pytest.fixture
def per_part(tmp_path: Path) -> Iterator[ConductorProcess]:
    proc = ConductorProcess(write_concert(tmp_path, tokens={**TOKENS, "performer": PART_TOKENS}))
    yield proc
    proc.stop()


async def test_each_part_opens_with_its_own_token(per_part: ConductorProcess) -> None:
    drones = TuttiClient(per_part.url, "performer", "t-drones", part="drones")
    await drones.connect()
    await drones.close()
    for part, token in (("pulses", "t-drones"), ("drones", TOKENS["performer"])):
        wrong = TuttiClient(per_part.url, "performer", token, part=part)
        with pytest.raises(ConnectionError, match=f"bad_token: wrong token for part '{part}'"):
            await wrong.connect()
        await wrong.sio.disconnect()
    assert per_part.status()["rejections"]["bad_token"] == 2
    assert "t-drones" not in "".join(per_part.log_lines)  # tokens are never logged


async def test_the_conductor_gets_a_link_and_qr_code_per_part(per_part: ConductorProcess) -> None:
    boss = TuttiClient(per_part.url, "conductor", TOKENS["conductor"])
    listener = TuttiClient(per_part.url, "audience")
    await boss.connect()
    await listener.connect()
    try:
        answer = await boss.sio.call("invite", {"base": "https://concert.example:8443"}, timeout=5)
        assert answer["ok"], answer
        assert [i["part"] for i in answer["invites"]] == list(PART_TOKENS)
        for invite in answer["invites"]:
            url = urlparse(invite["url"])
            assert (url.scheme, url.netloc, url.path) == ("https", "concert.example:8443", "/perform")
            assert parse_qs(url.query) == {"part": [invite["part"]], "token": [PART_TOKENS[invite["part"]]]}
            # The QR code is the link's, as a phone's camera would read it.
            assert invite["svg"] == segno.make(invite["url"], error="m").svg_inline(scale=4, dark="#000", light="#fff")
        refused = await listener.sio.call("invite", {"base": "https://concert.example:8443"}, timeout=5)
        assert refused["code"] == "forbidden"
        bad = await boss.sio.call("invite", {"base": "javascript:alert(1)"}, timeout=5)
        assert bad["code"] == "bad_payload"
    finally:
        await boss.close()
        await listener.close()


async def test_an_invitation_from_the_console_joins_a_phone_to_its_part(
    browser: Browser, per_part: ConductorProcess
) -> None:
    console = await open_page(browser, f"{per_part.url}/console?token={TOKENS['conductor']}")
    await console.click("#invite")
    cards = console.locator("#invites figure")
    await cards.first.wait_for()
    assert await cards.count() == len(PART_TOKENS)
    assert await console.locator("#invites figure svg").count() == len(PART_TOKENS)
    link = await console.locator("#invites figure[data-part=pulses] a").get_attribute("href")
    assert link is not None and link.startswith(per_part.url)
    phone = await open_page(browser, link)
    joined = await phone.evaluate("() => [window.tutti.you.role, window.tutti.you.part]")
    assert joined == ["performer", "pulses"]
    assert not console.errors and not phone.errors  # type: ignore[attr-defined]


def test_per_part_tokens_must_name_every_part_and_only_parts(tmp_path: Path) -> None:
    tokens = {**TOKENS, "performer": {"drones": "a", "bells": "b"}}
    with pytest.raises(InvalidFile) as e:
        load_concert(write_concert(tmp_path, tokens=tokens))
    text = str(e.value)
    assert "tokens.performer.bells: no part 'bells' in the score" in text
    assert "tokens.performer: no token for the parts pulses, sketch" in text
