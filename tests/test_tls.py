"""HTTPS and WSS: the performer's page over TLS in Chromium, in a secure context (for wake lock)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from playwright.async_api import Browser

from conductor.concert import load_concert
from conductor.yamlcheck import InvalidFile
from tests.conftest import TOKENS, ConductorProcess, write_concert


def test_certificate(folder: Path) -> dict[str, str]:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return {"cert": str(folder / "cert.pem"), "key": str(folder / "key.pem")}


test_certificate.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


async def test_the_performer_page_over_https(tmp_path: Path, browser: Browser) -> None:
    conductor = ConductorProcess(write_concert(tmp_path, tls=test_certificate(tmp_path)))
    try:
        assert conductor.url.startswith("https://")
        context = await browser.new_context(ignore_https_errors=True)  # the test's own certificate
        page = await context.new_page()
        await page.goto(f"{conductor.url}/perform?part=drones&token={TOKENS['performer']}")
        await page.wait_for_function("() => window.tutti && window.tutti.score && window.tutti.clock.samples >= 8")
        assert await page.evaluate("window.isSecureContext && location.protocol === 'https:'")
        transport = await page.evaluate("window.tutti.socket.io.engine.transport.name")
        assert transport == "websocket"  # WSS, on the same certificate
        await context.close()
    finally:
        conductor.stop()


def test_missing_certificate_files_are_named(tmp_path: Path) -> None:
    path = write_concert(tmp_path, tls={"cert": "nowhere.pem", "key": "nokey.pem"})
    with pytest.raises(InvalidFile) as caught:
        load_concert(path)
    messages = [str(p) for p in caught.value.problems]
    assert any(": tls.cert: no file at" in m for m in messages) and any(": tls.key: no file at" in m for m in messages)
