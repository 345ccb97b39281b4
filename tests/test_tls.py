"""HTTPS and WSS: the performer's page over TLS in Chromium, in a secure context (for wake lock)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.async_api import Browser

from conductor.core.concert import load_concert
from conductor.core.yamlcheck import InvalidFile
from tests.conftest import ROOT, TOKENS, ConductorProcess, write_concert
from tests.test_node import node_health, start_node, stop_node, until


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


def private_ca(folder: Path) -> dict[str, str]:
    """A concert's own certificate authority, and a certificate it signed for the conductor."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Tutti concert CA",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=conductor", "-keyout", "key.pem", "-out", "c.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,IP:::1\n")
    openssl("x509", "-req", "-in", "c.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "san.ext", "-out", "cert.pem")  # fmt: skip
    return {"cert": str(folder / "cert.pem"), "key": str(folder / "key.pem"), "ca": str(folder / "ca.pem")}


async def test_nodes_and_the_terminal_console_trust_a_private_ca(tmp_path: Path) -> None:
    tls = private_ca(tmp_path)
    conductor = ConductorProcess(write_concert(tmp_path, tls={"cert": tls["cert"], "key": tls["key"]}))
    bare = ("ucas", 0, "unused", "--no-synth", "--no-jack")  # a node that only joins
    trusting = await start_node(conductor.url, "trusting", *bare, "--ca", tls["ca"])
    doubting = await start_node(conductor.url, "doubting", *bare)
    try:
        await until(lambda: node_health(conductor, "trusting").get("up") is True, 15, "the node never joined over TLS")
        # Without the concert's CA the conductor's certificate is refused: that node never joins.
        await asyncio.sleep(3)
        assert "doubting" not in {c["name"] for c in conductor.status()["clients"]}
        output = tmp_path / "status.txt"
        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "conductor", "status", "--url", conductor.url, "--token", TOKENS["conductor"],
            "--once", "--output", str(output), "--ca", tls["ca"], cwd=ROOT,
        )  # fmt: skip
        assert await asyncio.wait_for(status.wait(), 30) == 0
        assert "trusting" in output.read_text()
    finally:
        await stop_node(trusting)
        await stop_node(doubting)
        conductor.stop()
