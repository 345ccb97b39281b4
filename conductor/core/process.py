"""How Tutti's own processes live and end.

The programs Tutti starts (jackd, scsynth, jacktrip) end with the agent that started them
(``die_with_parent``), and an agent whose event loop is stuck ends itself (``Watchdog``), so that
its unit's restart policy brings it back.
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import signal

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
STALL_LIMIT = 10.0  # seconds the event loop may go without a turn before the process ends


def die_with_parent() -> None:
    """Run in a child before exec: Linux ends it when its parent dies, however the parent dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Watchdog:
    """Ends this process, every thread's traceback on stderr first, if its event loop does not
    turn for ``limit`` seconds. A node agent blocked for good plays nothing and reports nothing,
    while it looks alive to its unit; ended, it is started again within seconds, and its log
    says where it was stuck. faulthandler's own timer thread does it, since the stuck loop cannot."""

    def __init__(self, limit: float = STALL_LIMIT):
        self.limit = limit

    async def run(self) -> None:
        try:
            while True:
                faulthandler.dump_traceback_later(self.limit, exit=True)
                await asyncio.sleep(self.limit / 4)
        finally:
            faulthandler.cancel_dump_traceback_later()
