"""Whether a sketch file parses, asked of one long-lived node instead of a new ``node --check`` each time.

Starting node costs about a third of a second; with ``tutti serve --watch`` that was most of a live
edit's way to the pages. The long-lived node compiles each file with V8, as ``node --check`` does (a
global-mode sketch as a CommonJS script, a module sketch as an ES module), and answers only whether
it parses: a file that does not is then given to ``node --check`` for its error, so what ``tutti
check`` says of it stays exactly what node says. A checker that dies, answers late or is sent too
much is not asked (``None``: the caller runs ``node --check``); it is started again the next time.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import threading

ANSWER_WITHIN = 10.0  # seconds; a checker that takes longer is ended
MAX_SOURCE = 4 * 2**20  # bytes; a larger file is left to node --check
MAX_ANSWER = 4096  # bytes of one answer line

# Reads one JSON line at a time ({"source", "script"}), answers {"ok": true|false}. The CommonJS
# wrapper's arguments are those node --check compiles a script with (so a top-level `return` parses).
SERVER = r"""
const vm = require("vm");
const lines = require("readline").createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let ok = true;
  try {
    const { source, script } = JSON.parse(line);
    if (script) vm.compileFunction(source, ["exports", "require", "module", "__filename", "__dirname"]);
    else new vm.SourceTextModule(source);
  } catch {
    ok = false;
  }
  process.stdout.write(JSON.stringify({ ok }) + "\n");
});
"""


class SyntaxChecker:
    """One node process, shared by the threads that check (one question at a time)."""

    def __init__(self, node: str):
        self.node = node
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.started = 0  # processes started, for tests

    def _start(self) -> subprocess.Popen[bytes]:
        self.started += 1
        # It ends when its stdin does: with this process, however that ends.
        return subprocess.Popen(
            [self.node, "--experimental-vm-modules", "--no-warnings", "-e", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def close(self) -> None:
        with self.lock:
            self._end()

    def _end(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe:
                    pipe.close()
            self.proc = None

    def _ask(self, proc: subprocess.Popen[bytes], line: bytes) -> bytes | None:
        assert proc.stdin and proc.stdout
        proc.stdin.write(line)
        proc.stdin.flush()
        answer = b""
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            deadline = ANSWER_WITHIN
            while not answer.endswith(b"\n"):
                if not selector.select(deadline) or len(answer) > MAX_ANSWER:
                    return None
                chunk = os.read(fd, MAX_ANSWER)
                if not chunk:
                    return None  # it died
                answer += chunk
        return answer

    def parses(self, source: bytes, script: bool) -> bool | None:
        """Whether V8 compiles ``source``; None when the checker could not say."""
        if len(source) > MAX_SOURCE:
            return None
        text = source.decode("utf-8", errors="replace")
        line = json.dumps({"source": text, "script": script}).encode() + b"\n"
        with self.lock:
            for _ in range(2):  # a process that has died since its last answer: once more, with a new one
                fresh = self.proc is None or self.proc.poll() is not None
                if fresh:
                    self._end()
                    self.proc = self._start()
                assert self.proc is not None
                try:
                    answer = self._ask(self.proc, line)
                    ok = json.loads(answer)["ok"] if answer is not None else None
                except (OSError, ValueError, KeyError, TypeError):
                    ok = None
                if isinstance(ok, bool):
                    return ok
                self._end()  # started again next time
                if fresh:
                    return None
            return None


_checkers: dict[str, SyntaxChecker] = {}
_made = threading.Lock()


def checker(node: str) -> SyntaxChecker:
    """The process's checker for this node binary, started on first use and ended at exit."""
    with _made:
        if node not in _checkers:
            _checkers[node] = SyntaxChecker(node)
            atexit.register(_checkers[node].close)
        return _checkers[node]
