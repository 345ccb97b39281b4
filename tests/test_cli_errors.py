"""Every command-line mistake is one line that says what to do, and a non-zero exit; no traceback.

Each case runs ``tutti`` as an operator would (a subprocess); the ones that need a conductor share one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, SCORES, ConductorProcess, write_concert

pytestmark = pytest.mark.integration


def tutti(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TUTTI_")}
    return subprocess.run(
        [sys.executable, "-m", "conductor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )


def one_line(run: subprocess.CompletedProcess[str], *words: str) -> str:
    """The run failed with exactly one line of explanation, containing ``words``."""
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode != 0, run
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConductorProcess]:
    proc = ConductorProcess(write_concert(tmp_path_factory.mktemp("cli")))
    yield proc
    proc.stop()


@pytest.mark.parametrize("token", ["wrong", None])
def test_status_with_a_wrong_or_missing_token(running: ConductorProcess, token: str | None) -> None:
    line = one_line(tutti("status", "--url", running.url, "--once", *(["--token", token] if token else [])), "--token")
    assert ("wrong token" if token else "no token given") in line


def test_replay_to_a_conductor_with_a_wrong_token(running: ConductorProcess, tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_text("")
    one_line(tutti("replay", str(journal), "--url", running.url, "--token", "wrong"), "wrong token", "--token")


def test_status_of_an_unreachable_conductor() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one_line(tutti("status", "--url", f"http://127.0.0.1:{port}", "--token", "x", "--once"), "cannot reach", "--url")


def test_replay_of_a_missing_journal(tmp_path: Path) -> None:
    one_line(tutti("replay", str(tmp_path / "nothere.jsonl")), "cannot read the journal")


def test_serve_on_a_busy_port(running: ConductorProcess, tmp_path: Path) -> None:
    port = running.url.rsplit(":", 1)[1]
    one_line(tutti("serve", str(write_concert(tmp_path)), "--port", port), "in use", "--port")


def test_serve_with_a_busy_osc_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        osc = {"udp_port": 0, "tcp_port": taken.getsockname()[1]}
        one_line(tutti("serve", str(write_concert(tmp_path, osc=osc))), "for OSC on UDP 0, TCP", "in use", "osc:")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["emulate", "--to", "localhost"], ["is not HOST:PORT", "--help"]),
        (["emulate", "--to", "127.0.0.1:1", "--delay", "-1"], ["--delay", "0 to 10 seconds"]),
        (["emulate", "--to", "127.0.0.1:1", "--loss", "2"], ["--loss", "fraction"]),
        (["emulate", "--to", "127.0.0.1:1", "--delay-back", "nan"], ["--delay-back", "0 to 10 seconds"]),
        (["serve"], ["required", "--help"]),
    ],
)
def test_usage_mistakes(args: list[str], words: list[str]) -> None:
    one_line(tutti(*args), *words)


def test_plan_and_check_need_no_token_values() -> None:
    plan = tutti("deploy", "plan", "deploy/four-rivers.yaml")  # exactly as the README shows it
    assert plan.returncode == 0, plan.stderr
    assert "runs  node ccom-1 (site ccom)" in plan.stdout
    check = tutti("check", "deploy/four-rivers.yaml")
    assert check.returncode == 0, check.stderr
    assert "TUTTI_CONDUCTOR_TOKEN is not set (needed where the conductor runs)" in check.stderr


def test_version() -> None:
    run = tutti("--version")
    assert run.returncode == 0 and run.stdout.startswith("tutti ")


def test_check_prints_resolved_times_and_checks_sketches(tmp_path: Path) -> None:
    run = tutti("check", str(SCORES / "demo.yaml"))
    assert run.returncode == 0
    assert "section flood (Flood) at 0:40.0 (bar 13.1)" in run.stdout
    assert "cue 3 at 0:40.0 (bar 13.1): all /s_new" in run.stdout
    (tmp_path / "sketches").mkdir()
    (tmp_path / "sketches" / "ripples.js").write_text("export default function (p) {\n  let x = ;\n}\n")
    (tmp_path / "score.yaml").write_text((SCORES / "demo.yaml").read_text())
    bad = tutti("check", str(tmp_path / "score.yaml"))
    assert bad.returncode == 1
    assert "parts[2].layers[0].src: sketches/ripples.js line 2: SyntaxError: Unexpected token ';'" in bad.stderr


@pytest.mark.parametrize(
    ("text", "line", "plain"),
    [
        ("title: x\nparts:\n  - id: a\n   name: b\n", 4, "indented differently"),
        ("title: x\nparts:\n\t- id: a\n", 3, "a tab: indent with spaces"),
        ("title: x\nduration: [1, 2\n", 3, "a [list] is not closed"),
    ],
)
def test_yaml_syntax_errors_in_plain_words(tmp_path: Path, text: str, line: int, plain: str) -> None:
    (tmp_path / "s.yaml").write_text(text)
    run = tutti("check", str(tmp_path / "s.yaml"))
    assert run.returncode == 1
    first = run.stderr.splitlines()[0]
    assert first.startswith(f"{tmp_path / 's.yaml'}:{line}: (syntax): column ") and plain in first, first


def test_serve_a_score_as_it_is(tmp_path: Path) -> None:
    """A composer's score, served with defaults: tokens printed, the console's link ready to open."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "conductor", "serve", str(SCORES / "demo.yaml"), "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(8)]
        text = "".join(lines)
        assert "Tutti conductor: Tidal Lines" in text and "console:   http://127.0.0.1:" in text
        assert "/console?token=" in text and "tokens for this run: conductor " in text
        assert "start with --lan" in text  # loopback only: iPads cannot join, and it says so
        assert (tmp_path / "journals").is_dir()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.unit
def test_with_lan_the_printed_urls_use_an_address_ipads_can_reach(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--lan`` listens on every network; the URLs printed are at this machine's network address."""
    from types import SimpleNamespace

    from conductor.core.concert import load_concert
    from conductor.server import addresses
    from conductor.tools.cli import announce

    monkeypatch.setattr(addresses, "lan_addresses", lambda: ["192.0.2.7", "2001:db8::7"])
    concert = load_concert(write_concert(tmp_path))
    conductor = SimpleNamespace(osc=None, journal=SimpleNamespace(path=tmp_path / "journal.jsonl"), reachable=[])
    announce(concert, conductor, ["0.0.0.0", "::"], 8080)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "console:   http://192.0.2.7:8080/console" in out and "audience:  http://192.0.2.7:8080/audience" in out
    assert "only this machine" not in out
    assert conductor.reachable == ["192.0.2.7", "2001:db8::7"]  # what the console's invitations offer


def test_output_cut_short_by_its_reader_ends_quietly() -> None:
    """``tutti deploy plan … | head -1``: the rest is not wanted, and that is no error."""
    plan = subprocess.Popen(
        [sys.executable, "-m", "conductor", "deploy", "plan", "deploy/four-rivers.yaml"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert plan.stdout is not None and plan.stderr is not None
    assert plan.stdout.readline().strip()
    plan.stdout.close()  # as head does after its line
    assert plan.wait(60) == 0
    assert plan.stderr.read() == b""
