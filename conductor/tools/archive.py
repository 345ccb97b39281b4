"""The concert archive: every node's recordings gathered with the journal, and mixed on conductor time.

``collect`` copies each node's archive folder (``tutti node --archive DIR``: a WAV per track,
``clock.jsonl``, ``gaps.jsonl``; see ``conductor/node/archive.py``) and the concert's journal into
one folder, checks them, and writes ``index.json``: each track's file, channels, frames, first
conductor time, and its gaps in conductor time. ``mix`` renders each track as a stem that starts
at the archive's first conductor time, every block of it placed by the clock map (nothing is
resampled: a block moves by whole samples), and one multitrack WAV of all the stems.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

BLOCK = 48_000  # frames read and written at a time


class ArchiveError(Exception):
    """Something in an archive that cannot be used: the message names the file, line and field."""


@dataclass(frozen=True)
class ClockMap:
    """Frames of a node's recording to conductor time: straight lines between the points."""

    frames: list[int]
    times: list[float]
    rate: int

    def time(self, frame: float) -> float:
        i = max(0, min(len(self.frames) - 1, int(np.searchsorted(self.frames, frame, side="right")) - 1))
        return self.times[i] + (frame - self.frames[i]) / self.rate


def read_clock(path: Path, rate: int) -> tuple[ClockMap, list[str]]:
    """A node's clock map; each line that cannot be read is named and left out."""
    frames, times, problems = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            point = json.loads(line)
            frame, t = point["frame"], point["t"]
            if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
                raise ValueError("frame: not a whole number of frames")
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
                raise ValueError("t: not a finite conductor time")
            if frames and frame <= frames[-1]:
                raise ValueError("frame: not after the line before")
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{path}:{number}: {e if not isinstance(e, KeyError) else f'{e.args[0]}: missing'}")
            continue
        frames.append(frame)
        times.append(float(t))
    if not frames:
        raise ArchiveError(f"{path}: no clock-map point: the recording cannot be placed in time")
    return ClockMap(frames, times, rate), problems


def collect(journal: Path, folders: list[Path], out: Path) -> tuple[dict[str, Any], list[str]]:
    """Gather ``folders`` (one per node) and ``journal`` into ``out``; returns the index and the
    problems found (lines left out). Raises ArchiveError for what cannot be collected at all."""
    if not journal.is_file():
        raise ArchiveError(f"{journal}: no journal there")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(journal, out / "journal.jsonl")
    index: dict[str, Any] = {"journal": "journal.jsonl", "tracks": []}
    problems: list[str] = []
    for folder in folders:
        info_path = folder / "archive.json"
        try:
            info = json.loads(info_path.read_text())
            rate, tracks = int(info["rate"]), dict(info["tracks"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArchiveError(f"{info_path}: not a node's archive ({e})") from None
        node = folder.name
        shutil.copytree(folder, out / node, dirs_exist_ok=True)
        clock, bad = read_clock(out / node / "clock.jsonl", rate)
        problems += bad
        gaps = _gaps(out / node / "gaps.jsonl", problems)
        for name in tracks:
            wav = out / node / f"{name}.wav"
            try:
                sound = soundfile.info(str(wav))
            except (RuntimeError, soundfile.LibsndfileError) as e:
                raise ArchiveError(f"{wav}: not a sound file ({e})") from None
            index["tracks"].append(
                {
                    "node": node,
                    "track": name,
                    "file": f"{node}/{name}.wav",
                    "channels": sound.channels,
                    "rate": sound.samplerate,
                    "frames": sound.frames,
                    "start": clock.time(0),
                    "gaps": [{**g, "t": clock.time(g["frame"])} for g in gaps if g["track"] in (name, "*")],
                }
            )
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return index, problems


def _gaps(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            gap = json.loads(line)
            if not isinstance(gap.get("frame"), int) or not isinstance(gap.get("frames"), int):
                raise ValueError("frame, frames: not whole numbers")
            if not isinstance(gap.get("track"), str) or not isinstance(gap.get("kind"), str):
                raise ValueError("track, kind: not names")
        except (ValueError, AttributeError) as e:
            problems.append(f"{path}:{number}: {e}")
            continue
        out.append(gap)
    return out


def mix(archive: Path, stems_only: bool = False) -> list[Path]:
    """Render every track of a collected archive as a stem aligned on conductor time, and (unless
    ``stems_only``) one multitrack WAV of them all; returns the files written."""
    try:
        index = json.loads((archive / "index.json").read_text())
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e)
        raise ArchiveError(f"{archive / 'index.json'}: {why}: run tutti archive collect first") from None
    tracks = index["tracks"]
    if not tracks:
        raise ArchiveError(f"{archive}: no tracks to mix")
    rates = {t["rate"] for t in tracks}
    if len(rates) != 1:
        raise ArchiveError(f"{archive}: tracks at different rates ({sorted(rates)}): they cannot share a file")
    rate = rates.pop()
    clocks = {t["node"]: read_clock(archive / t["node"] / "clock.jsonl", rate)[0] for t in tracks}
    t0 = min(t["start"] for t in tracks)
    (archive / "stems").mkdir(exist_ok=True)
    stems = []
    for track in tracks:
        stem = archive / "stems" / f"{track['node']}-{track['track']}.wav"
        _place(archive / track["file"], clocks[track["node"]], t0, stem)
        stems.append(stem)
    (archive / "stems" / "start.json").write_text(json.dumps({"t": t0, "rate": rate}))
    if stems_only:
        return stems
    mixed = archive / "mix.wav"
    _interleave(stems, mixed, rate)
    return [*stems, mixed]


def _place(source: Path, clock: ClockMap, t0: float, stem: Path) -> None:
    """``source`` written from conductor time ``t0``: each stretch between clock-map points starts
    at the sample its point gives, by silence or by dropping the few samples it overlaps."""
    bounds = [*clock.frames, math.inf]
    with (
        soundfile.SoundFile(str(source)) as f,
        soundfile.SoundFile(
            str(stem), "w", samplerate=f.samplerate, channels=f.channels, subtype="PCM_24", format="WAV"
        ) as out,
    ):
        written = 0
        frame = 0
        k = 0
        while frame < f.frames:
            while k + 1 < len(clock.frames) and bounds[k + 1] <= frame:
                k += 1
            stop = int(min(bounds[k + 1], f.frames, frame + BLOCK))
            target = round((clock.time(frame) - t0) * f.samplerate)
            block = f.read(stop - frame, dtype="float32", always_2d=True)
            if target > written:
                out.write(np.zeros((target - written, f.channels), np.float32))
                written = target
            drop = max(0, written - target)
            out.write(block[drop:])
            written += max(0, len(block) - drop)
            frame = stop


def _interleave(stems: list[Path], mixed: Path, rate: int) -> None:
    files = [soundfile.SoundFile(str(s)) for s in stems]
    try:
        channels = sum(f.channels for f in files)
        length = max(f.frames for f in files)
        with soundfile.SoundFile(str(mixed), "w", samplerate=rate, channels=channels, subtype="PCM_24") as out:
            for start in range(0, length, BLOCK):
                n = min(BLOCK, length - start)
                parts = []
                for f in files:
                    block = f.read(n, dtype="float32", always_2d=True)
                    parts.append(np.pad(block, ((0, n - len(block)), (0, 0))))
                out.write(np.concatenate(parts, axis=1))
    finally:
        for f in files:
            f.close()
