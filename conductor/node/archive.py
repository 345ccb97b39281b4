"""The concert archive at a node: what its scsynth plays and what each JackTrip link brings, on disk.

One JACK client records every track (``scsynth``: the scsynth's main outputs; ``from-SITE``: what
a link receives) into one WAV file each, 24-bit at JACK's rate, through libsndfile (``soundfile``).
All tracks share JACK's frame count, so one clock map serves them: ``clock.jsonl`` gives, about
every second, a file frame and the conductor time at which it sounded (the node's synced clock at
the start of its JACK cycle, the earliest among neighbouring cycles, as ``jackio`` times frames).
Nothing is ever left out or shifted: frames JACK skipped (an xrun) are written as silence, and
while a track's source is gone (scsynth restarting, a link reconnecting) it records silence too.
Each such gap is written to ``gaps.jsonl`` with its kind, track, first frame and length.
``conductor/tools/archive.py`` collects these folders and mixes them on conductor time.

JACK-Client calls back on JACK's real-time thread: the callback only copies the block; the
writing happens in a worker thread, away from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jack
import numpy as np
import soundfile

from conductor.core.audio import AudioSettings, client_name
from conductor.node.jackio import cycle_start

log = logging.getLogger("tutti.archive")
EVERY = 0.25  # seconds between writes (and looks at the sources)
MAP_EVERY = 1.0  # seconds of audio between clock-map points
NEIGHBOURS = 8  # cycles either side whose earliest start is taken as a cycle's own
BREAK = 0.0005  # seconds: JACK's timing moved by more than this: a new clock-map point
MAX_HELD = 4096  # JACK cycles held for the writer (about 11 s at 128 frames): past that the writer is stuck
SUBTYPE = "PCM_24"


@dataclass
class Track:
    """A track and where its channels come from: a JACK output port each, there or not."""

    name: str
    sources: list[str]
    kind: str  # the gap it leaves while a source is missing: "scsynth down", "link down"
    missing_since: int | None = None  # file frame from which a source has been gone
    file: soundfile.SoundFile | None = field(default=None, repr=False)

    @property
    def channels(self) -> int:
        return len(self.sources)


class ArchiveRecorder:
    """Records ``tracks`` from JACK server ``server`` into ``folder``; ``conductor_offset(wall)``
    is the node's offset to the conductor's clock at a wall-clock time."""

    def __init__(
        self, server: str, name: str, folder: Path, tracks: list[Track], conductor_offset: Callable[[float], float]
    ):
        self.folder = folder
        self.tracks = tracks
        self.conductor_offset = conductor_offset
        self.client = jack.Client(name, servername=server, no_start_server=True)
        self.rate = self.client.samplerate
        self.ports = [[self.client.inports.register(f"{t.name}_{c + 1}") for c in range(t.channels)] for t in tracks]
        self._lock = threading.Lock()
        self._held: list[tuple[int, float, np.ndarray]] = []  # JACK frame, wall time, samples (channel, frame)
        self._overflow = 0  # cycles dropped because the writer fell behind (written as silence, marked)
        self.frames = 0  # written to each track's file
        self.next_jack_frame: int | None = None
        self.gaps: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._window: deque[tuple[int, float]] = deque(maxlen=2 * NEIGHBOURS + 1)  # (file frame, wall - frame/rate)
        self._line: float | None = None  # wall - frame/rate at the last clock-map point
        self._mapped = 0  # file frame of the last clock-map point
        self._file_minus_jack = 0  # a file frame less the JACK frame that sounded then
        self._gone: dict[str, int] = {}  # JACK client -> the JACK frame at which it last went away
        self._looked = 0  # JACK frame at which the sources were last looked at
        every = [p for ports in self.ports for p in ports]

        @self.client.set_client_registration_callback
        def registration(name: str, register: bool) -> None:  # JACK's notification thread
            if not register:
                self._gone[name] = self.client.frame_time

        @self.client.set_process_callback
        def process(frames: int) -> None:
            start = self.client.last_frame_time
            started = cycle_start(self.client, self.rate)
            block = np.stack([p.get_array() for p in every]).astype(np.float32, copy=True)
            with self._lock:
                if len(self._held) < MAX_HELD:
                    self._held.append((start, started, block))
                else:
                    self._overflow += 1

    async def start(self) -> None:
        await asyncio.to_thread(self._open)  # the disk and libjack, off the event loop
        self._task = asyncio.create_task(self._run())

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for track in self.tracks:
            path = self.folder / f"{track.name}.wav"
            track.file = soundfile.SoundFile(
                path, "w", samplerate=self.rate, channels=track.channels, subtype=SUBTYPE, format="WAV"
            )
        (self.folder / "archive.json").write_text(
            json.dumps({"rate": self.rate, "tracks": {t.name: t.channels for t in self.tracks}, "started": time.time()})
        )
        self.client.activate()
        self._looked = self.client.frame_time

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(EVERY)
            try:
                await asyncio.to_thread(self._write)  # first: it maps JACK frames to the file's
                self._patch()
            except Exception:  # a bad moment in JACK: the next pass goes on (gaps keep the length)
                log.exception("archive")

    def _patch(self) -> None:
        """Connect each track to its sources as they come and go; a source gone is a gap from the
        moment JACK said it went to the moment it is connected again."""
        looked, self._looked = self._looked, self.client.frame_time
        existing = {p.name for p in self.client.get_ports(is_output=True)}
        for track, ports in zip(self.tracks, self.ports, strict=True):
            unheard = False  # a source not connected at this look (gone, or back with new ports)
            for source, port in zip(track.sources, ports, strict=True):
                if source in {c.name for c in self.client.get_all_connections(port)}:
                    continue
                unheard = True
                if source in existing:
                    with contextlib.suppress(jack.JackError):  # not ready yet: the next look
                        self.client.connect(source, port)
            if unheard and track.missing_since is None:
                left = max((self._gone.get(source.split(":")[0], 0) for source in track.sources), default=0)
                gone = left if left >= looked else looked  # it went since the last look
                track.missing_since = max(0, gone + self._file_minus_jack)
            pairs = zip(track.sources, ports, strict=True)
            heard = all(s in {c.name for c in self.client.get_all_connections(p)} for s, p in pairs)
            if heard and track.missing_since is not None:
                now = self.client.frame_time + self._file_minus_jack
                self._gap(track.kind, track.name, track.missing_since, now - track.missing_since)
                track.missing_since = None

    def _write(self) -> None:
        """Write what JACK gave since the last pass, with silence for frames it skipped (worker thread)."""
        with self._lock:
            held, self._held = self._held, []
            overflow, self._overflow = self._overflow, 0
        if overflow:
            log.error("archive: the writer fell %d cycles behind; they are silence, marked", overflow)
        chunks: list[np.ndarray] = []
        offsets: list[tuple[int, float]] = []  # (file frame, wall time less the frames before it)
        for jack_frame, wall, block in held:
            if self.next_jack_frame is not None and jack_frame != self.next_jack_frame:
                skipped = (jack_frame - self.next_jack_frame) % 2**32  # JACK's frame counter wraps
                if 0 < skipped < self.rate * 60:  # frames JACK never ran: silence of that length
                    self._gap("xrun", "*", self.frames, skipped)
                    chunks.append(np.zeros((block.shape[0], skipped), np.float32))
                    self.frames += skipped
            offsets.append((self.frames, wall - self.frames / self.rate))
            self._file_minus_jack = self.frames - jack_frame
            chunks.append(block)
            self.frames += block.shape[1]
            self.next_jack_frame = (jack_frame + block.shape[1]) % 2**32
        if not chunks:
            return
        audio = np.concatenate(chunks, axis=1)
        first = 0
        for track in self.tracks:
            assert track.file is not None
            track.file.write(audio[first : first + track.channels].T)
            first += track.channels
        self._map(offsets)

    def _map(self, offsets: list[tuple[int, float]]) -> None:
        """Clock-map points: a frame and the conductor time it sounded at. A cycle's time is the
        earliest start among its neighbours (JACK's driver wakes late, never early). A point is
        written every MAP_EVERY of audio, and wherever JACK's timing broke (after an xrun the
        dummy driver, and some real ones, start their timing again): time JACK lost there is a gap."""
        window = self._window
        for frame, offset in offsets:
            window.append((frame, offset))
            if len(window) < window.maxlen:  # type: ignore[operator]
                continue
            centre = window[NEIGHBOURS][0]
            base = min(o for _, o in window)
            moved = base - self._line if self._line is not None else 0.0
            if self._line is None or abs(moved) > BREAK or centre - self._mapped >= MAP_EVERY * self.rate:
                if moved > BREAK:  # time with no frames, just before this one
                    self._gap("lost time", "*", centre, round(moved * self.rate))
                wall = base + centre / self.rate
                with (self.folder / "clock.jsonl").open("a") as f:
                    f.write(json.dumps({"frame": centre, "t": wall + self.conductor_offset(wall)}) + "\n")
                self._line, self._mapped = base, centre

    def _gap(self, kind: str, track: str, frame: int, frames: int) -> None:
        gap = {"kind": kind, "track": track, "frame": frame, "frames": frames, "seconds": frames / self.rate}
        self.gaps.append(gap)
        log.warning("archive: %s on %s, %.3f s of silence from frame %d", kind, track, frames / self.rate, frame)
        with (self.folder / "gaps.jsonl").open("a") as f:
            f.write(json.dumps(gap) + "\n")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.client.deactivate()
        await asyncio.to_thread(self._write)
        for track in self.tracks:
            if track.missing_since is not None:
                self._gap(track.kind, track.name, track.missing_since, self.frames - track.missing_since)
            if track.file is not None:
                track.file.close()
        self.client.close()


def scsynth_track(client: str, channels: int = 2) -> Track:
    """The scsynth's main outputs (its ports are new after every restart)."""
    return Track("scsynth", [f"{client}:out_{c + 1}" for c in range(channels)], "scsynth down")


def link_track(site: str, jacktrip: str, channels: int) -> Track:
    """What a JackTrip end receives from ``site`` (its ports come back with every reconnection)."""
    return Track(f"from-{site}", [f"{jacktrip}:receive_{c + 1}" for c in range(channels)], "link down")


def link_tracks(audio: AudioSettings, site: str) -> list[Track]:
    """What each JackTrip end at ``site`` receives, a track per site it comes from."""
    hub = audio.hub
    out = []
    for link in audio.links:
        if hub is not None and site == hub.site:  # the hub's end of each client's link, named by its site
            out.append(link_track(link.site, link.site, link.channels or 2))
        elif hub is not None and link.site == site:
            out.append(link_track(hub.site, client_name(link), link.channels or 2))
    for pair in audio.pairs:
        for end, other in ((pair.server, pair.client), (pair.client, pair.server)):
            if end.site == site:
                out.append(link_track(other.site, f"jacktrip-{other.site}", pair.channels))
    return out
