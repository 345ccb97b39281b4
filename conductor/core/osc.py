"""OSC datagrams as Tutti writes them: messages and timetagged bundles, with python-osc's own encoders.

python-osc's ``OscMessageBuilder`` parses back every datagram it builds, which was most of what a
cue cost a node; the arguments cues and echoes carry (int, float, str) are written here directly
with its ``osc_types`` encoders, anything else through the builder as python-osc has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.parsing import osc_types

BUNDLE = b"#bundle\x00"  # what an OSC bundle begins with


def osc_message(address: str, args: Sequence[Any] = (), *, doubles: bool = False) -> bytes:
    """The datagram of one message; ``doubles``: floats as 64-bit (a beat count of an hour's piece
    needs more than float32)."""
    tags, data = ",", []
    for arg in args:
        if isinstance(arg, str):
            tags += "s"
            data.append(osc_types.write_string(arg))
        elif isinstance(arg, float):
            tags += "d" if doubles else "f"
            data.append(osc_types.write_double(arg) if doubles else osc_types.write_float(arg))
        elif isinstance(arg, int) and not isinstance(arg, bool) and -(2**31) <= arg < 2**31:
            tags += "i"
            data.append(osc_types.write_int(arg))
        else:
            return _built(address, args, doubles)
    return osc_types.write_string(address) + osc_types.write_string(tags) + b"".join(data)


def _built(address: str, args: Sequence[Any], doubles: bool) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg, OscMessageBuilder.ARG_TYPE_DOUBLE if doubles and isinstance(arg, float) else None)
    return builder.build().dgram


def osc_bundle(at: float, address: str, args: Sequence[Any] = (), *, doubles: bool = False) -> bytes:
    """A bundle of one message to run at ``at`` (epoch seconds), as OscBundleBuilder makes it."""
    message = osc_message(address, args, doubles=doubles)
    return BUNDLE + osc_types.write_date(at) + osc_types.write_int(len(message)) + message
