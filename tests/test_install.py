"""``pip install .`` (not editable) into a fresh virtual environment serves the demo: the browser
code and the SynthDefs come with the package, not from the clone."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_an_installed_tutti_serves_the_demo_from_anywhere(tmp_path: Path) -> None:
    if not (ROOT / "clients" / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("clients/node_modules is missing: run ./setup.sh --no-demo")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # A copy of the clone, so that nothing can be found in the working tree by accident.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".jacktrip2", "bench")
    shutil.copytree(ROOT, source, ignore=ignore)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(source)], check=True, timeout=600)
    shutil.rmtree(source)

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from conductor import files; print(files.CLIENTS, files.SYNTHS)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(str(venv) in folder for folder in where), where
    assert list(Path(where[1]).glob("tutti_*.scsyndef")), "the compiled SynthDefs are installed"

    concert = tmp_path / "concert.yaml"
    concert.write_text(json.dumps({
        "score": str(ROOT / "scores" / "demo.yaml"), "port": 0, "journal": str(tmp_path / "j.jsonl"),
        "tokens": {"conductor": "c"},
    }))  # fmt: skip
    server = subprocess.Popen(
        [str(venv / "bin" / "tutti"), "serve", str(concert)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        deadline, url = time.monotonic() + 30, ""
        while not url and time.monotonic() < deadline and (line := server.stdout.readline()):
            if m := re.search(r"listening on (\S+)", line):
                url = m[1]
        assert url, "the installed conductor did not start"
        for path, expected in [
            ("/perform", "<html"),
            ("/clients/conductor.js", "export class Conductor"),
            ("/vendor/socket.io/socket.io.min.js", "io"),
            ("/vendor/p5/p5.min.js", "p5"),
            ("/vendor/p5-2/p5.min.js", "p5"),  # the other version a score may name
            ("/vendor/acorn/acorn.js", "acorn"),
            ("/clients/tutti.css", "body"),
        ]:
            with urllib.request.urlopen(url + path, timeout=5) as r:
                assert r.status == 200 and expected in r.read().decode(), path
    finally:
        server.terminate()
        server.wait(10)
