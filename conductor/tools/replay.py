"""Replay with sound: a collected and mixed concert archive watched again in a browser.

``tutti replay ARCHIVE`` serves, on a local port, a page ``/replay`` that draws the audience view
of the archive's score while an ``<audio>`` element plays the archive's ``mix.wav``. The page
maps the audio's time to conductor time (``stems/start.json``: the conductor time where the mix
starts) and that to the score's position through the segments and parameter values the
performance had, worked out here from the journal with the conductor's own ``Transport``.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from conductor.core import journal
from conductor.core.score import LoadedScore, load_score
from conductor.core.transport import Transport
from conductor.core.yamlcheck import InvalidFile
from conductor.files import CLIENTS, VENDOR
from conductor.tools.archive import ArchiveError


def history(score: LoadedScore, records: list[journal.Record]) -> dict[str, Any]:
    """Every segment and parameter value the performance had, as a page's state holds them: each
    change applied in the order the conductor accepted it, nothing pruned."""
    transport = Transport(score.score)
    for record in records:
        transport.apply(record.change)
    return {
        "seq": transport.seq,
        "segments": [asdict(s) for _, s in transport.segments.entries()],
        "params": {name: tl.entries() for name, tl in transport.params.items()},
    }


def load(archive: Path, score_path: str | None = None) -> dict[str, Any]:
    """What the replay page needs from ``archive``; raises ArchiveError saying what to do."""
    if not (archive / "index.json").is_file():
        raise ArchiveError(f"{archive}: not a concert archive (no index.json): run tutti archive collect first")
    mixed, start = archive / "mix.wav", archive / "stems" / "start.json"
    if not mixed.is_file() or not start.is_file():
        raise ArchiveError(f"{archive}: no mix.wav to play: run tutti archive mix {archive} first")
    try:
        t0 = json.loads(start.read_text())["t"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArchiveError(f"{start}: t: cannot be read ({e}): run tutti archive mix {archive} again") from None
    if isinstance(t0, bool) or not isinstance(t0, int | float) or not math.isfinite(t0):
        raise ArchiveError(f"{start}: t: not a finite conductor time: run tutti archive mix {archive} again")
    contents = journal.read(archive / "journal.jsonl")
    where = score_path or str(contents.header.get("score", ""))
    try:
        score = load_score(where)
    except (InvalidFile, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else "no score named"
        raise ArchiveError(f"the concert's score cannot be read ({first}): give it with --score FILE") from None
    return {
        "score": score,
        "mix": mixed,
        "skipped": contents.skipped,
        "replay": {"score": score.to_json(), "start": float(t0), **history(score, contents.records)},
    }


def app(loaded: dict[str, Any]) -> web.Application:
    score: LoadedScore = loaded["score"]
    application = web.Application()

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(CLIENTS / "replay.html", headers={"Cache-Control": "no-cache"})

    async def data(request: web.Request) -> web.Response:
        response = web.json_response(loaded["replay"])
        response.enable_compression()  # a concert's every value: an hour of one fader is 9 MB of JSON
        return response

    async def mix(request: web.Request) -> web.StreamResponse:
        # aiohttp's FileResponse answers Range requests: the page can seek anywhere at once.
        return web.FileResponse(loaded["mix"], headers={"Content-Type": "audio/wav"})

    async def score_file(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in score.files():  # only the sketches the score names
            raise web.HTTPNotFound(text=f"the score names no file '{name}'")
        return web.FileResponse(score.folder / name, headers={"Content-Type": "text/javascript"})

    application.router.add_get("/replay", page)
    application.router.add_get("/api/replay", data)
    application.router.add_get("/replay/mix.wav", mix)
    application.router.add_get("/score-files/{name:.+}", score_file)
    application.router.add_static("/clients/", CLIENTS / "lib")
    for name, folder in VENDOR.items():
        if folder.is_dir():
            application.router.add_static(f"/vendor/{name}/", folder)
    return application


async def serve(archive: Path, host: str, port: int, score_path: str | None) -> int:
    """Serve the replay page until interrupted; prints its address, one line."""
    loaded = load(archive, score_path)
    for problem in loaded["skipped"]:
        print(problem, flush=True)
    runner = web.AppRunner(app(loaded), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        print(f"replaying {archive}: open http://{shown}:{bound}/replay", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
    return 0
