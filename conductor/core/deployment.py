"""The ``deployment`` section of a concert file: which machines run the conductor, the nodes and the hub."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr

Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NodeMachine(_Strict):
    name: StrictStr  # the node's name (cues may target node:NAME)
    host: StrictStr  # the machine's address
    parts: list[StrictStr] = []  # default: the site's parts
    port: Port = 57110  # scsynth's UDP port
    # The sound card JACK plays through: an ALSA device ("hw:USB", "hw:1"), or "dummy" for a
    # machine that only relays audio. Without it the node runs JACK's dummy driver: silent.
    sound_card: Annotated[StrictStr, Field(pattern=r"^(dummy|hw:[A-Za-z0-9_,]{1,40})$")] | None = None


class SiteMachines(_Strict):
    nodes: list[NodeMachine] = []


class HubMachine(_Strict):
    """A server that runs the concert's JackTrip hub in a container (``audio.hub`` says how)."""

    host: StrictStr  # the server's address
    name: StrictStr = "hub"  # its node agent's name: set ``audio.hub.node`` to it


class Deployment(_Strict):
    conductor: StrictStr  # the address of the machine that runs the conductor
    url: StrictStr | None = None  # how nodes and browsers reach it (default: from that address and port)
    sites: dict[StrictStr, SiteMachines] = {}
    hub: HubMachine | None = None
    ca: StrictStr | None = None  # the concert's own CA certificate (PEM), if the conductor's is signed by one
