"""Tutti's data files, found as package data: the browser code and the SynthDefs.

In a clone they are the repository's ``clients/`` and ``sc_synths/`` (an editable install maps
them); installed with ``pip install .`` they are copies inside the package.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _folder(package: str) -> Path:
    return Path(str(files(package)))


CLIENTS = _folder("conductor.clients")
SYNTHS = _folder("conductor.sc_synths")
VENDOR = {  # browser libraries installed from npm at set-up: a concert needs no internet
    "socket.io": CLIENTS / "node_modules" / "socket.io-client" / "dist",
    "p5": CLIENTS / "node_modules" / "p5" / "lib",  # 1.x
    "p5-2": CLIENTS / "node_modules" / "p5-2" / "lib",  # 2.x (npm alias of p5@2)
    "acorn": CLIENTS / "node_modules" / "acorn" / "dist",  # parses a global-mode sketch to guard its loops
}
