"""The ``deployment`` section of a concert file: which machines run the conductor, the nodes and the hub."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

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


Ms = Annotated[float, Field(ge=0, le=1000, strict=True)]  # one-way milliseconds


class CampusDelay(_Strict):
    """One campus's distance to the conductor and hub's site, in milliseconds one way."""

    to: Ms  # from the campus to the conductor and the hub (half the ping time, when that is all there is)
    back: Ms | None = None  # from them to the campus, if it differs (default: as ``to``)
    jitter: Annotated[float, Field(ge=0, le=100, strict=True)] = 0.0  # up to this much more each way

    @model_validator(mode="before")
    @classmethod
    def _one_number(cls, data: Any) -> Any:
        """A bare number is the delay both ways."""
        return {"to": data} if isinstance(data, int | float) and not isinstance(data, bool) else data

    @property
    def way_back(self) -> float:
        return self.to if self.back is None else self.back


class RehearsalSettings(_Strict):
    """What ``tutti deploy rehearse`` makes of the concert's network: each campus's delay."""

    delays: dict[StrictStr, CampusDelay] = {}  # campus (a site of the deployment) -> ms, or to/back/jitter

    def campus(self, site: str | None) -> CampusDelay:
        return self.delays.get(site or "", CampusDelay(to=0.0))

    def pair(self, source: str | None, destination: str | None) -> tuple[float, float]:
        """One way from a host at site ``source`` to one at ``destination`` (None: the conductor
        and hub's site), as (delay, jitter) in ms: the way in to the conductor and hub's site and the
        way out from it; none between hosts at one site."""
        if source == destination:
            return 0.0, 0.0
        there, back = self.campus(source), self.campus(destination)
        delay = (there.to if source else 0.0) + (back.way_back if destination else 0.0)
        return delay, (there.jitter if source else 0.0) + (back.jitter if destination else 0.0)
