"""jack2's registry of servers: entries that killed servers left are freed, live ones kept."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from conductor.node.scsynth import (
    JACK_MAGIC,
    JACK_MAX_SERVERS,
    JACK_REGISTRY,
    JACK_REGISTRY_HEADER,
    forget_killed_jack_servers,
    start_jack,
)

ENTRY = 264  # jack2 1.9: pid_t, then the server's name


def entries(registry: Path) -> dict[int, bytes]:
    """pid -> name of each entry in use."""
    data = registry.read_bytes()
    header = JACK_REGISTRY_HEADER.unpack_from(data)[4]
    entry = (header - JACK_REGISTRY_HEADER.size) // JACK_MAX_SERVERS
    out = {}
    for at in range(JACK_REGISTRY_HEADER.size, header, entry):
        (pid,) = struct.unpack_from("<i", data, at)
        if pid:
            out[pid] = data[at + 4 : at + entry].split(b"\0")[0]
    return out


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.unit
def test_only_the_entries_of_servers_that_are_gone_are_freed(tmp_path: Path) -> None:
    registry = tmp_path / "jack-shm-registry"
    header = JACK_REGISTRY_HEADER.size + JACK_MAX_SERVERS * ENTRY
    data = bytearray(header + 512)
    JACK_REGISTRY_HEADER.pack_into(data, 0, JACK_MAGIC, 0, 1, len(data), header, 268)
    dead, live = dead_pid(), os.getpid()
    for slot, (pid, name) in enumerate([(dead, b"jack-0:killed"), (live, b"jack-0:running")]):
        at = JACK_REGISTRY_HEADER.size + slot * ENTRY
        struct.pack_into("<i", data, at, pid)
        data[at + 4 : at + 4 + len(name)] = name
    registry.write_bytes(data)
    assert forget_killed_jack_servers(registry) == 1
    assert entries(registry) == {live: b"jack-0:running"}
    assert forget_killed_jack_servers(tmp_path / "none") == 0  # no JACK server has run here
    registry.write_bytes(bytes(len(data)))  # not jack2's layout: left alone
    assert forget_killed_jack_servers(registry) == 0


@pytest.mark.integration
async def test_a_long_named_jack_server_starts_and_its_entry_is_freed_once_killed() -> None:
    name = f"tutti-registry-{os.getpid():09d}"  # 24 characters (or 40): `jack_lsp -s` aborts on such names
    jackd = await start_jack(name)
    try:
        assert name.encode() in entries(JACK_REGISTRY).get(jackd.pid, b""), entries(JACK_REGISTRY)
    finally:
        jackd.send_signal(signal.SIGKILL)
        await jackd.wait()
    assert jackd.pid in entries(JACK_REGISTRY)  # jack2 keeps it: nothing unregistered the server
    assert forget_killed_jack_servers() >= 1
    assert jackd.pid not in entries(JACK_REGISTRY)
