"""This machine's addresses on its networks: what an iPad on the same network can open.

Found by asking the kernel which source address it would use toward an outside address (a UDP
``connect`` sends nothing), and by resolving the host's own name; loopback and link-local
addresses are left out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

# Documentation addresses: never reached, only used to ask the kernel for its route's source.
_PROBES = ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1"))


def lan_addresses() -> list[str]:
    """Addresses of this machine others on its networks can reach, IPv4 first."""
    found: list[str] = []
    for family, probe in _PROBES:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            found.append(s.getsockname()[0])
    with contextlib.suppress(OSError):
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)]
    usable = []
    for text in dict.fromkeys(found):
        address = ipaddress.ip_address(text.split("%")[0])
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            usable.append(str(address))
    return sorted(usable, key=lambda a: ":" in a)


def is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return host == "localhost"


def url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
