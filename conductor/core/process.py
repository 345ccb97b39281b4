"""The programs Tutti starts (jackd, scsynth, jacktrip) end with the agent that started them."""

from __future__ import annotations

import ctypes
import signal

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in a child before exec: Linux ends it when its parent dies, however the parent dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
