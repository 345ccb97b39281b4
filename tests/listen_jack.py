"""Records JACK output ports of one JACK server until its stdin closes, then prints each port's onsets.

    python -m tests.listen_jack SERVER PORT...

libjack talks to one JACK server per process: a test that listens at two sites runs this for the
other one. Printed: one JSON line, a list per port of the wall-clock times of its onsets.
"""

from __future__ import annotations

import json
import sys

from conductor.node.jackio import Recorder


def main() -> None:
    server, *ports = sys.argv[1:]
    recorder = Recorder(server, f"listen-{server}"[:60], ports=len(ports))
    for k, port in enumerate(ports):
        recorder.listen_to(port, k)
    print("listening", flush=True)
    sys.stdin.read()
    onsets = [[o.time for o in recorder.onsets(threshold=0.3, port=k)] for k in range(len(ports))]
    recorder.close()
    print(json.dumps(onsets), flush=True)


if __name__ == "__main__":
    main()
