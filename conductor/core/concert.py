"""A concert file: which score, where the conductor listens, the tokens per role, the journal.

Paths are relative to the concert file. A token is written as the token itself, as
``env:NAME`` (read from the environment) or ``file:PATH`` (first line of a file); an empty or
absent token leaves that role open (usual for the audience).
"""

from __future__ import annotations

import os
import secrets
import ssl
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from conductor.core.audio import AudioSettings, check_audio
from conductor.core.deployment import Deployment, RehearsalSettings
from conductor.core.score import LoadedScore, load_score
from conductor.core.yamlcheck import InvalidFile, YamlDocument


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class OscRoute(_Strict):
    """An address to a parameter (one number), or to two (an XY pad: two numbers, one change)."""

    address: Annotated[StrictStr, Field(pattern=r"^/\S+$")]
    param: StrictStr | None = None
    params: tuple[StrictStr, StrictStr] | None = None
    range: tuple[float, float] = (0.0, 1.0)  # what the controller sends for a parameter's min and max

    @model_validator(mode="after")
    def _one_or_two(self) -> OscRoute:
        if (self.param is None) == (self.params is None):
            raise ValueError("give param (one parameter) or params (two, for an XY pad)")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (self.param,) if self.param is not None else self.params or ()


class OscSettings(_Strict):
    udp_port: Annotated[int, Field(ge=0, le=65535)] = 9000
    tcp_port: Annotated[int, Field(ge=0, le=65535)] | None = 9001
    allow: list[StrictStr] = ["127.0.0.1/32", "::1/128"]  # networks controllers may send from
    routes: list[OscRoute] = []


class LinkSettings(_Strict):
    """The Ableton Link session each node drives at its site."""

    # Whether a tempo another Link peer sets (a performer's LinkClock.tempo_, a DJ app) becomes the
    # concert's tempo at every site; by default the conductor's tempo wins and the peer is put back.
    peers_set_tempo: bool = False


class Tokens(_Strict):
    conductor: StrictStr
    performer: StrictStr | dict[StrictStr, StrictStr] | None = None  # one for every part, or one per part
    audience: StrictStr | None = None
    node: StrictStr | None = None
    composer: StrictStr | None = None  # the /compose page; default: the conductor's token


class TlsSettings(_Strict):
    """HTTPS and WSS: browsers on iPads keep the screen awake only in a secure context."""

    cert: StrictStr  # PEM certificate chain
    key: StrictStr  # PEM private key


class ConcertFile(_Strict):
    title: StrictStr | None = None
    score: StrictStr
    host: StrictStr | list[StrictStr] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    lookahead: Annotated[float, Field(gt=0, le=10)] = 0.05  # seconds: the least between a command and its effect
    # Seconds: the most, whatever a client reports; a slower destination is not waited for.
    max_lookahead: Annotated[float, Field(gt=0, le=10)] = 0.3
    journal: StrictStr = "journal.jsonl"
    tokens: Tokens
    cors_origins: list[StrictStr] = []  # other web origins allowed to connect ("*" for any)
    # Seconds the event loop may run late (90th percentile over a second) before audience clients
    # are let go, so that performers and nodes keep their time.
    overload_lag: Annotated[float, Field(gt=0, le=10)] = 0.1
    # Bytes a client may leave unread (a frozen page, a dead Wi-Fi link) before it is let go.
    unread_limit: Annotated[int, Field(ge=4096)] = 1 << 20
    osc: OscSettings | None = None  # OSC controllers: ports, allow-list, routes
    audio: AudioSettings | None = None  # JackTrip links between the sites
    link: LinkSettings = LinkSettings()
    tls: TlsSettings | None = None
    deployment: Deployment | None = None  # which machines run what (tutti deploy)
    rehearsal: RehearsalSettings | None = None  # each campus's delay in tutti deploy rehearse


class Concert:
    """A loaded concert: its settings, resolved tokens and validated score."""

    def __init__(
        self,
        path: Path,
        settings: ConcertFile,
        tokens: dict[str, str],
        part_tokens: dict[str, str],
        score: LoadedScore,
        warnings: list[str],
    ):
        self.path = path
        self.settings = settings
        self.tokens = tokens  # role -> token; a role missing here is open
        self.part_tokens = part_tokens  # part -> token, when each part has its own
        self.score = score
        self.warnings = warnings  # "file:line: field: message" for settings that will have no effect

    @property
    def title(self) -> str:
        return self.settings.title or self.score.score.title

    @property
    def hosts(self) -> list[str]:
        host = self.settings.host
        return [host] if isinstance(host, str) else host

    def token_for(self, role: str, part: str | None = None) -> str | None:
        """The token that role (and part) must give, or None if it is open."""
        if role == "performer" and self.part_tokens:
            return self.part_tokens.get(part or "", "")  # no part: nothing opens it
        if role == "composer":  # it sees every part: never open
            return self.tokens.get("composer", self.tokens["conductor"])
        return self.tokens.get(role)

    def tls_context(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.path.parent / tls.cert, self.path.parent / tls.key)
        return context

    @property
    def journal_path(self) -> Path:
        return Path(os.path.normpath(self.path.parent / self.settings.journal))


def _resolve(spec: str) -> str:
    kind, _, rest = spec.partition(":")
    if kind == "env":
        if rest not in os.environ:
            raise ValueError(f"environment variable {rest} is not set")
        return os.environ[rest]
    if kind == "file":
        try:
            return Path(rest).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise ValueError(f"cannot read a token from {rest}: {e}") from e
    return spec


def load_concert(path: Path | str, resolve_tokens: bool = True) -> Concert:
    """Load a concert file and its score; raise InvalidFile listing every problem.

    Without ``resolve_tokens`` (checking a file, planning a deployment) a token that cannot be read
    here is a warning, not a problem: the machine that serves the concert has it.
    """
    path = Path(path)
    doc = YamlDocument(path)
    settings = doc.validate(ConcertFile)
    problems = []
    unresolved = []
    tokens, part_tokens = {}, {}
    for role, spec in settings.tokens.model_dump().items():
        for key, one in spec.items() if isinstance(spec, dict) else [(None, spec)]:
            if not one:
                continue
            try:
                if key is None:
                    tokens[role] = _resolve(one)
                else:
                    part_tokens[key] = _resolve(one)
            except ValueError as e:
                problem = doc.problem(("tokens", role) + ((key,) if key else ()), str(e))
                (problems if resolve_tokens else unresolved).append(problem)
    score_path = path.parent / settings.score
    if not score_path.is_file():
        problems.append(doc.problem(("score",), f"no score file at {score_path}"))
    for field in ("cert", "key"):
        if settings.tls and not (path.parent / getattr(settings.tls, field)).is_file():
            problems.append(doc.problem(("tls", field), f"no file at {path.parent / getattr(settings.tls, field)}"))
    if problems:
        raise InvalidFile(problems)
    score = load_score(score_path)
    for i, route in enumerate(settings.osc.routes if settings.osc else []):
        for name in route.names:
            if score.score.parameter(name) is None:
                where = ("osc", "routes", i, "param" if route.param else "params")
                problems.append(doc.problem(where, f"no parameter '{name}' in the score"))
        if route.range[0] == route.range[1]:
            problems.append(doc.problem(("osc", "routes", i, "range"), "the two ends of a range must differ"))
    if part_tokens:
        parts = [p.id for p in score.score.parts]
        for part in part_tokens:
            if part not in parts:
                problems.append(doc.problem(("tokens", "performer", part), f"no part '{part}' in the score"))
        if missing := [p for p in parts if p not in part_tokens]:
            problems.append(doc.problem(("tokens", "performer"), f"no token for the parts {', '.join(missing)}"))
    if settings.deployment and settings.deployment.ca and not (path.parent / settings.deployment.ca).is_file():
        problems.append(doc.problem(("deployment", "ca"), f"no file at {path.parent / settings.deployment.ca}"))
    hub_machine = settings.deployment.hub if settings.deployment else None
    if hub_machine is not None:
        if settings.audio is None or settings.audio.hub is None:
            problems.append(doc.problem(("deployment", "hub"), "a hub machine, but no hub in the audio section"))
        elif settings.audio.hub.node != hub_machine.name:
            problems.append(
                doc.problem(("audio", "hub", "node"), f"set it to '{hub_machine.name}': the hub machine runs the hub")
            )
    if settings.rehearsal is not None:
        sites = settings.deployment.sites if settings.deployment else {}
        if not settings.deployment:
            problems.append(doc.problem(("rehearsal",), "rehearses a deployment: add a deployment section"))
        for site in settings.rehearsal.delays:
            if settings.deployment and site not in sites:
                where = ("rehearsal", "delays", site)
                problems.append(doc.problem(where, f"no site '{site}' in the deployment (sites: {', '.join(sites)})"))
    warnings = [f"{u} (needed where the conductor runs)" for u in unresolved]
    if settings.audio is not None:
        errors, cautions = check_audio(settings.audio)
        problems += [doc.problem(loc, message) for loc, message in errors]
        warnings += [f"{doc.problem(loc, message)} (warning)" for loc, message in cautions]
    if problems:
        raise InvalidFile(problems)
    return Concert(path, settings, tokens, part_tokens, score, warnings)


def concert_for_score(score_path: Path | str, journal: Path) -> Concert:
    """A concert with defaults for a score served as it is (a composer trying a piece): fresh
    random tokens for the conductor, the performers and the nodes, an open audience."""
    path = Path(score_path).resolve()
    score = load_score(path)
    tokens = {role: secrets.token_urlsafe(9) for role in ("conductor", "performer", "node")}
    settings = ConcertFile(score=str(path), journal=str(journal.resolve()), tokens=Tokens(**tokens))
    return Concert(path, settings, tokens, {}, score, [])


def is_concert(path: Path | str) -> bool:
    """Whether a YAML file is a concert file (it names a score) rather than a score."""
    try:
        data = YamlDocument(path).data
    except InvalidFile:
        return False
    return isinstance(data, dict) and "score" in data and "parts" not in data
