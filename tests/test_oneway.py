"""Each direction of a JackTrip link measured on the shared clock, and used for ``aligned`` cues.

Two sites, ucas and pku, each with its own ``tutti node`` and JACK server (dummy driver), joined by
a pair whose packets go through ``tutti emulate --udp``: 3 ms plus up to 2 ms of jitter from pku to
ucas, 20 ms back. (With 12 ms back, jacktrip's jitter buffers, trimming each direction on its own on
a busy machine, left as little as 2 ms between the two ways in some runs here.)
Recorders at both ends time the very impulses the nodes measure with, as the
truth; and a cue aligned at pku is recorded there, beside pku's own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from playwright.async_api import Browser, Page

from conductor.node.jackio import Recorder
from tests.conftest import ROOT, TOKENS, ConductorProcess, udp_ports, write_concert
from tests.test_jacktrip import PERIOD, link, watching
from tests.test_node import node_health, start_node, stop_all, until

CLICK = "schedule: {aligned: pku}, address: /s_new, args: [tutti_click, -1, 0, 0]"
# Two seconds apart: a jitter buffer's step is measured within a second and a half (a measurement
# each second), so a step between a measurement and the cues planned with it misses one cue, not three.
AT = (3.0, 5.0, 7.0, 9.0, 11.0)
SCORE = """\
title: Two sites
duration: 600
parts:
  - {id: a, name: A, site: ucas}
  - {id: c, name: C, site: pku}
cues:
""" + "".join(f"  - {{at: {at}, target: all, {CLICK}}}\n" for at in AT)
THERE, JITTER, BACK = 0.003, 0.002, 0.020  # pku to ucas, plus up to JITTER; ucas to pku


RECENT = 'canvas[data-link="pku–ucas pair"][data-which="recent"]'


async def plotted(page: Page) -> str:
    """What the link's last-minutes plot shows now (its pixels, as a data URL)."""
    return await page.eval_on_selector(RECENT, "c => c.toDataURL()")


async def console_follows_a_restart(page: Page, conductor: ConductorProcess, base: int) -> None:
    await page.wait_for_selector('#ways tr[data-link="pku–ucas pair"]')
    await page.wait_for_selector('canvas[data-link="pku–ucas pair"][data-which="concert"]')
    before = await plotted(page)
    await page.wait_for_function(
        "([sel, before]) => document.querySelector(sel).toDataURL() !== before", arg=[RECENT, before]
    )
    row = await page.inner_text('#ways tr[data-link="pku–ucas pair"]')
    assert "(connected)" in row and " ms) · " in row, row  # and the queue each way needs
    # pku's jacktrip is killed: its node starts it again, measures again, and the plot goes on.
    restarts = link(conductor, "pku").get("restarts", 0)
    pgrep = await asyncio.create_subprocess_exec("pgrep", "-f", f" -B {base + 1} ", stdout=-1)
    os.kill(int((await pgrep.communicate())[0].split()[0]), signal.SIGKILL)
    await until(lambda: link(conductor, "pku").get("restarts", 0) > restarts, 10, "the restart was not reported")
    measured = link(conductor, "pku").get("ways_measured", 0)
    await until(lambda: link(conductor, "pku").get("ways_measured", 0) > measured, 30, "not measured after the restart")
    await page.wait_for_function(
        "() => document.querySelector('#ways tr[data-link=\"pku–ucas pair\"]').innerText.includes('(connected)')"
    )
    assert await plotted(page) != before
    assert await page.evaluate("document.querySelectorAll('#wayplots canvas').length") == 2
    sharp = "[...document.querySelectorAll('#wayplots canvas')].every(c =>"
    sharp += " c.width === Math.round(c.clientWidth * devicePixelRatio))"
    assert await page.evaluate(sharp)  # drawn at the size shown: its labels are 12 px on any screen


def first(zero: float, onsets: list[float], at: float) -> float | None:
    """The first onset within 0.1 s before to 0.2 s after ``at`` seconds into the piece, if any."""
    return min((t - zero for t in onsets if at - 0.1 <= t - zero < at + 0.2), default=None)


def matched(sent: list[float], arrived: list[float]) -> list[tuple[float, float]]:
    """(time sent, delay) of each impulse sent that arrived within 0.9 s (the measuring window)."""
    out = []
    for s in sent:
        later = [a - s for a in arrived if 0 < a - s < 0.9]
        if later:
            out.append((s, min(later)))
    return out


async def test_each_direction_is_measured_and_aligned_cues_use_it(tmp_path: Path, browser: Browser) -> None:
    (tmp_path / "score.yaml").write_text(SCORE)
    pid = os.getpid()
    base = 28000 + (pid % 1000) * 4
    audio = {
        "pairs": [
            {
                "server": {"site": "ucas", "address": "127.0.0.1", "port": base, "public_port": base + 2,
                           "scsynth_to_send": 1},
                "client": {"site": "pku", "host": "127.0.0.1", "bind_port": base + 1},
            }
        ]
    }  # fmt: skip
    emulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conductor", "emulate", "--udp", "--listen", f"127.0.0.1:{base + 2}",
        "--to", f"127.0.0.1:{base}", "--delay", str(THERE), "--jitter", str(JITTER), "--delay-back", str(BACK),
        "--jitter-back", "0", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert emulator.stdout is not None
    assert b"emulating" in await asyncio.wait_for(emulator.stdout.readline(), 30)
    conductor = ConductorProcess(write_concert(tmp_path, score=tmp_path / "score.yaml", audio=audio))
    servers = {site: f"t18-{pid}-{site}" for site in ("ucas", "pku")}
    agents, listener, recorder = [], None, None
    boss, observer, cues = watching(conductor.url)
    try:
        for site, port in zip(("ucas", "pku"), udp_ports(2), strict=True):
            agents.append(await start_node(conductor.url, f"n{site}", site, port, servers[site]))
            await until(lambda s=site: node_health(conductor, f"n{s}").get("up") is True, 60, f"{site} never came up")
        both = lambda: all(link(conductor, s).get("state") == "connected" for s in ("ucas", "pku"))  # noqa: E731
        await until(both, 30, "the pair never connected")

        # The truth: the nodes' impulses, timed as they leave and as they arrive, at both ends.
        listener = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.listen_jack", servers["ucas"], "tutti-probe-ucas-send:probe_1",
            "jacktrip-pku:receive_3", "scsynth-nucas:out_1",
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert listener.stdout is not None and listener.stdin is not None
        assert b"listening" in await asyncio.wait_for(listener.stdout.readline(), 30)
        recorder = Recorder(servers["pku"], "recorder-pku-oneway", ports=4)
        recorder.listen_to("tutti-probe-pku-send:probe_1", 0)
        recorder.listen_to("jacktrip-ucas:receive_3", 1)
        recorder.listen_to("scsynth-npku:out_1", 2)  # pku's own click
        recorder.listen_to("jacktrip-ucas:receive_1", 3)  # ucas's, through the link
        started = time.time()

        before = {s: link(conductor, s).get("ways_measured", 0) for s in ("ucas", "pku")}

        def measured() -> bool:  # three of each direction since the recorders started, and a round trip
            again = all(link(conductor, s).get("ways_measured", 0) >= n + 3 for s, n in before.items())
            return again and bool(link(conductor, "pku").get("latency_ms"))

        await until(measured, 30, "each direction was not measured")

        # A cue aligned at pku: ucas plays it early by what the conductor asks.
        await observer.connect()
        await boss.connect()
        assert (await boss.command("play"))["ok"]
        status = conductor.status()
        zero = status["state"]["segments"][-1]["t"] - status["clock_minus_wall"]
        await until(lambda: time.time() > zero + AT[-1] + 0.5, 25, "the cues' time never came")
        up = link(conductor, "ucas")["way_in_ms"]["pku"] / 1000  # pku to ucas, as measured now
        down = link(conductor, "pku")["way_in_ms"]["ucas"] / 1000
        round_trip = link(conductor, "pku")["latency_ms"] / 1000
        listener.stdin.close()
        out, _ = await asyncio.wait_for(listener.communicate(), 30)
        ucas_sent, ucas_heard, ucas_played = json.loads(out.decode().splitlines()[-1])
        pku_sent, pku_heard = ([o.time for o in recorder.onsets(threshold=0.3, port=k)] for k in (0, 1))
        true_up = matched([s for s in pku_sent if s > started], ucas_heard)
        true_down = matched([s for s in ucas_sent if s > started], pku_heard)
        print(f"pku to ucas: measured {up * 1000:.3f} ms, recorded {[round(d * 1000, 3) for _, d in true_up]}")
        print(f"ucas to pku: measured {down * 1000:.3f} ms, recorded {[round(d * 1000, 3) for _, d in true_down]}")
        half = (round_trip - PERIOD) / 2
        print(f"round trip {round_trip * 1000:.3f} ms: half (less the loop) {half * 1000:.3f} ms")

        # Each direction within a period of what the recorders saw the same impulses take (the
        # latest measurement against the last few recorded: a jitter buffer may trim a period).
        assert true_up and true_down
        assert min(abs(up - d) for _, d in true_up[-3:]) <= PERIOD, (up, true_up)
        assert min(abs(down - d) for _, d in true_down[-3:]) <= PERIOD, (down, true_down)
        # The emulated asymmetry is there, and half the round trip misses it by 4.5 ms or more.
        typical = [statistics.median(d for _, d in ways) for ways in (true_up, true_down)]
        assert max(abs(half - way) for way in typical) >= 0.0045, (half, typical)
        # The round trip checks the two: one way each, plus the far end's loop back (a period).
        # Its jitter buffers move each way by periods within seconds on a busy machine (seen in CI:
        # 30.6 ms one way for ten seconds, then 21.8), so the latest round trips are held to the
        # latest ways recorded, not to the whole run's.
        trips = [trip / 1000 for trip in link(conductor, "pku")["history_ms"][-5:]]
        ways = [u + d + PERIOD for _, u in true_up[-3:] for _, d in true_down[-3:]]
        assert min(abs(trip - way) for trip in trips for way in ways) <= 2 * PERIOD, (trips, ways)

        # The aligned cues: ucas plays each click early by what the conductor asks, so that it
        # reaches pku at the cue's time (each node allows for where its scsynth places a timetag).
        # Within 1 ms there while the link holds still; but a jitter buffer may step a period
        # between the latest measurement and a cue (a busy machine makes them step more often), and
        # the cue is then a whole number of periods off. Half the round trip, in the same run,
        # misses every one by more.
        asked = sorted((cue["t"], cue["align"]["ucas"]) for cue in cues if cue.get("align"))
        assert len(asked) == 5, asked
        there, errors, errors_half = [], [], []
        for (_, early), at in zip(asked, AT, strict=True):
            played = first(zero, ucas_played, at)  # at ucas
            arrived = first(zero, [o.time for o in recorder.onsets(port=3)], at)  # at pku
            own = first(zero, [o.time for o in recorder.onsets(port=2)], at)  # pku's own
            if played is None or arrived is None or own is None:  # a link that drops packets may lose one
                print(f"cue at {at}: not heard at both ends")
                continue
            took = arrived - played
            there.append(arrived - at)
            errors.append(took - early)
            errors_half.append(took - half)
            print(
                f"cue at {at}: heard at pku {there[-1] * 1000:+.3f} ms from its time (pku's own"
                f" {(own - at) * 1000:+.3f} ms); ucas early by {early * 1000:.3f} ms, played"
                f" {(played - at + early) * 1000:+.3f} ms from that, its click took {took * 1000:.3f} ms: planned"
                f" delay off by {errors[-1] * 1000:+.3f} ms one way, {errors_half[-1] * 1000:+.3f} ms by half the"
                " round trip"
            )
        assert len(there) >= 3, there
        error = statistics.median(abs(e) for e in errors)
        error_half = statistics.median(abs(e) for e in errors_half)
        print(
            f"aligned at pku, planned delay off by {error * 1000:.3f} ms one way,"
            f" {error_half * 1000:.3f} ms by half the round trip (medians)"
        )
        # The delay each cue was planned with, against the one its click took: within 1 ms or a whole
        # number of periods off (a jitter buffer's step), but one: the link's delay itself can move by
        # a period and a half within a second under load (seen once in CI: 28.3 ms measured, 24.2 ms
        # at the cue), which no measurement before the cue can know. Where it was heard also holds
        # each scsynth's own placement, which strays for a moment after an xrun (seen with a CPU hog
        # beside the suite: ucas played a click 2.2 ms early, its planned delay right to 0.05 ms).
        steps = [round(e / PERIOD) for e in errors]
        off_the_periods = [e for e, k in zip(errors, steps, strict=True) if abs(e - k * PERIOD) >= 0.001]
        assert len(off_the_periods) <= 1, errors
        assert steps.count(0) >= len(errors) / 2, errors
        assert min(abs(e) for e in errors_half) > 0.002 and error_half >= error + 0.002, (errors, errors_half)

        # Kept: a row per second beside the journal, with both ways.
        rows = [json.loads(line) for line in (tmp_path / "journal.links.jsonl").read_text().splitlines()]
        assert rows and rows[-1]["link"] == "pku–ucas pair" and rows[-1]["a_to_b_ms"] and rows[-1]["b_to_a_ms"]
        assert len({row["t"] for row in rows}) >= 5

        # Shown: the console's plot of the link, drawn and updated, through a restart of jacktrip.
        page = await browser.new_page(viewport={"width": 1024, "height": 768})
        await page.goto(f"{conductor.url}/console?token={TOKENS['conductor']}")
        await console_follows_a_restart(page, conductor, base)
    finally:
        if recorder:
            recorder.close()
        if listener and listener.returncode is None:
            listener.kill()
            await listener.wait()
        await observer.close()
        await boss.close()
        await stop_all(conductor, agents)
        emulator.terminate()
        await emulator.wait()
