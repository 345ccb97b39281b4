"""SuperCollider synths: sources in ``sc_synths/*.scd``, compiled by real sclang into ``.scsyndef``.

Each source file holds one SynthDef expression named like the file (``tutti_ping.scd`` defines
``\\tutti_ping``). ``build`` compiles them all with headless sclang; ``check`` rebuilds into a
temporary folder and reports any committed ``.scsyndef`` that differs, is missing, or has no source.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from conductor.files import SYNTHS

# Compiles each source (its last expression must be a SynthDef) and writes it; a failure names the file.
_DRIVER = """
var failed = false;
%SOURCES%.do { |path|
    var def = try { thisProcess.interpreter.executeFile(path) } { |err| err };
    case
    { def.isKindOf(SynthDef).not } {
        failed = true;
        ("TUTTI-FAILED " ++ path ++ ": "
            ++ if(def.isKindOf(Exception)) { def.errorString } { "not a SynthDef" }).postln }
    { def.name.asString != PathName(path).fileNameWithoutExtension } {
        failed = true;
        ("TUTTI-FAILED " ++ path ++ ": defines " ++ def.name ++ ", not the file's name").postln }
    { def.writeDefFile(%OUT%); ("TUTTI-BUILT " ++ def.name).postln };
};
if(failed) { 1.exit } { 0.exit };
"""


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Stale:
    name: str
    why: str

    def __str__(self) -> str:
        return f"{self.name}: {self.why}"


def _sc_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build(source_dir: Path = SYNTHS, out_dir: Path | None = None, timeout: float = 120) -> list[str]:
    """Compile every ``*.scd`` in ``source_dir`` into ``out_dir`` (default: beside them); returns the names."""
    out_dir = out_dir or source_dir
    sources = sorted(source_dir.glob("*.scd"))
    if not sources:
        raise BuildError(f"no SynthDef sources (*.scd) in {source_dir}")
    driver = _DRIVER.replace("%SOURCES%", "[" + ", ".join(_sc_string(str(p)) for p in sources) + "]")
    driver = driver.replace("%OUT%", _sc_string(str(out_dir)))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QTWEBENGINE_DISABLE_SANDBOX": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "build.scd"
        script.write_text(driver)
        try:
            run = subprocess.run(
                ["sclang", str(script)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                stdin=subprocess.DEVNULL,
                cwd=tmp,
            )
        except FileNotFoundError as e:
            raise BuildError("sclang is not installed (Debian package supercollider-language)") from e
        except subprocess.TimeoutExpired as e:
            raise BuildError(f"sclang did not finish within {timeout:g} s") from e
    failures = re.findall(r"^TUTTI-FAILED (.*)$", run.stdout, re.M)
    if failures or run.returncode != 0:
        detail = "\n".join(failures) or run.stdout[-2000:]
        raise BuildError(f"sclang could not build the synths:\n{detail}")
    return re.findall(r"^TUTTI-BUILT (\S+)$", run.stdout, re.M)


def check(source_dir: Path = SYNTHS) -> list[Stale]:
    """Rebuild into a temporary folder; every compiled file that is not up to date."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp)
        build(source_dir, fresh_dir)
        fresh = {p.stem: p.read_bytes() for p in fresh_dir.glob("*.scsyndef")}
    committed = {p.stem: p.read_bytes() for p in source_dir.glob("*.scsyndef")}
    stale = [Stale(n, "not compiled: run 'tutti synths build'") for n in sorted(fresh.keys() - committed.keys())]
    stale += [
        Stale(n, "differs from its source: run 'tutti synths build'")
        for n in sorted(fresh.keys() & committed.keys())
        if fresh[n] != committed[n]
    ]
    stale += [Stale(n, "compiled file with no source") for n in sorted(committed.keys() - fresh.keys())]
    return stale
