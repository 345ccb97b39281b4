"""The programs Tutti starts end with the process that started them, however it ends."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_node import until

PARENT = """
import subprocess, sys, time
from conductor.core.process import tied
child = subprocess.Popen(tied("sleep", "600"))
print(child.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # ended, not yet reaped by whoever adopted it


@pytest.mark.integration
async def test_a_tied_program_ends_when_its_parent_is_killed() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT
    )
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 10))
    try:
        # The program itself, in setpriv's place (its pid is the one its parent knows).
        await until(lambda: Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep\0"), 10, "not sleep")
        parent.kill()  # SIGKILL: the parent cannot clean up
        await parent.wait()
        await until(lambda: gone(child), 10, "the program outlived its parent")
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)
