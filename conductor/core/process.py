"""The programs Tutti starts (jackd, scsynth, jacktrip, web workers) end with the process that started them."""

from __future__ import annotations


def tied(*command: str) -> tuple[str, ...]:
    """``command`` started so that Linux ends it (SIGTERM) when the process that started it dies,
    however it dies: util-linux's ``setpriv`` sets that and runs the command in its place (the same
    pid). Not a ``preexec_fn``: Python runs that in the forked child of a process with threads
    (libjack's, the event loop's executor), where it may deadlock before the command starts."""
    return ("setpriv", "--pdeathsig", "TERM", "--", *command)
