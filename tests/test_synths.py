"""SynthDefs: built by real sclang, checked up to date, and loaded into a real scsynth."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from conductor.files import SYNTHS
from conductor.node.scsynth import forget_shared_memory
from conductor.tools import synths
from tests.conftest import ROOT


def test_the_committed_synths_are_up_to_date() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "conductor", "synths", "check"], capture_output=True, text=True, cwd=ROOT, timeout=180
    )
    assert run.returncode == 0, run.stderr
    assert "up to date" in run.stdout


def test_check_finds_stale_missing_and_orphaned_files(tmp_path: Path) -> None:
    for source in SYNTHS.glob("tutti_*.scd"):
        shutil.copy(source, tmp_path)
    assert sorted(synths.build(tmp_path)) == ["tutti_click", "tutti_drone", "tutti_mark", "tutti_ping", "tutti_tone"]
    assert synths.check(tmp_path) == []
    (tmp_path / "tutti_ping.scd").write_text((tmp_path / "tutti_ping.scd").read_text().replace("880", "440"))
    (tmp_path / "tutti_click.scsyndef").unlink()
    shutil.copy(tmp_path / "tutti_drone.scsyndef", tmp_path / "old_synth.scsyndef")
    assert [str(s) for s in synths.check(tmp_path)] == [
        "tutti_click: not compiled: run 'tutti synths build'",
        "tutti_ping: differs from its source: run 'tutti synths build'",
        "old_synth: compiled file with no source",
    ]


def test_a_broken_source_is_named(tmp_path: Path) -> None:
    (tmp_path / "tutti_bad.scd").write_text("SynthDef(\\tutti_bad, { |out| Out.ar(out, SinOsc.ar(440) * ) })\n")
    (tmp_path / "tutti_misnamed.scd").write_text("SynthDef(\\something_else, { Out.ar(0, DC.ar(0)) })\n")
    with pytest.raises(synths.BuildError) as caught:
        synths.build(tmp_path)
    message = str(caught.value)
    assert f"{tmp_path / 'tutti_bad.scd'}: " in message
    assert f"{tmp_path / 'tutti_misnamed.scd'}: defines something_else, not the file's name" in message


@pytest.fixture
def scsynth(tmp_path: Path) -> Iterator[int]:
    """A dummy-driver JACK server and a scsynth on it; yields scsynth's UDP port."""
    server = f"tutti-test-{os.getpid()}"
    env = {**os.environ, "JACK_NO_AUDIO_RESERVATION": "1", "JACK_DEFAULT_SERVER": server}
    jack = subprocess.Popen(
        ["jackd", "-n", server, "-d", "dummy", "-r", "48000", "-p", "128", "-C", "2", "-P", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sc = None
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["jack_lsp", "-s", server], env=env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "jackd did not start"
            time.sleep(0.2)
        sc = subprocess.Popen(
            ["scsynth", "-u", str(port), "-i", "2", "-o", "2", "-R", "0", "-l", "8", "-H", f"{server}:scsynth-test"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        yield port
    finally:
        for proc in (sc, jack):
            if proc:
                proc.terminate()
                proc.wait(10)
        forget_shared_memory(port)


def osc(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def test_the_synths_load_and_play_in_scsynth(scsynth: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.connect(("127.0.0.1", scsynth))

        def ask(packet: bytes, want: str, tries: int = 20) -> OscMessage:
            for _ in range(tries):
                sock.send(packet)
                try:
                    while True:
                        reply = OscMessage(sock.recv(65536))
                        if reply.address == want:
                            return reply
                except TimeoutError:
                    continue
                except ConnectionRefusedError:  # scsynth has not opened its port yet
                    time.sleep(0.25)
            raise AssertionError(f"no {want}")

        ask(osc("/status"), "/status.reply")  # scsynth is up
        ask(osc("/notify", 1), "/done")
        done = ask(osc("/d_loadDir", str(SYNTHS)), "/done")
        assert done.params[0] == "/d_loadDir"
        for node, name in enumerate(["tutti_ping", "tutti_click", "tutti_drone"], start=1000):
            started = ask(osc("/s_new", name, node, 0, 0, "amp", 0.1), "/n_go", tries=1)
            assert started.params[0] == node, name
