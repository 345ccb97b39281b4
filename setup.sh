#!/usr/bin/env bash
# Sets up Tutti on Debian (run as root) and starts the demo concert.
#   ./setup.sh            install what is missing, then serve the demo
#   ./setup.sh --no-demo  install only (the test command uses this)
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages: the real components Tutti drives, plus Python and Node for itself.
packages=()
need() { command -v "$1" >/dev/null 2>&1 || packages+=("$2"); }
need python3 python3
need node nodejs
need npm npm
need scsynth supercollider-server
need sclang supercollider-language
need jackd jackd2
need jacktrip jacktrip
need chromium chromium
need redis-server redis-server
need openssl openssl  # test certificates for HTTPS
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
if ((${#packages[@]})); then
    echo "installing Debian packages: ${packages[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
fi

# jacktrip 2.x beside Debian 12's 1.7, in .jacktrip2 (the link tests run both). Without it
# everything else still works, and the one test that needs it says what is missing.
if ! jacktrip -v 2>/dev/null | grep -q 'VERSION: 2\.'; then
    deploy/jacktrip2.sh .jacktrip2 || echo "setup.sh: could not install jacktrip 2.x into .jacktrip2" >&2
fi

# Python packages in .venv, at the versions the project is tested with.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'

# Browser libraries for clients/, served by the conductor itself (no internet at concert time),
# and the Node Socket.IO server and clients bench/fanout.py compares Tutti with.
(cd clients && npm ci --no-audit --no-fund --loglevel=error)
(cd bench/node && npm ci --no-audit --no-fund --loglevel=error)

if [[ "${1:-}" != "--no-demo" ]]; then
    exec .venv/bin/tutti serve deploy/demo.yaml --lan  # on this machine's networks, so iPads can join; Play is pressed at the console
fi
