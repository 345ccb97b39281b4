"""Live controls in real headless Chromium: console sliders send while they move, and a performer's
fader follows its parameter when someone else moves it, but never while the performer holds it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from playwright.async_api import Browser, Locator, Page

from conductor.client import TuttiClient
from tests.conftest import TOKENS, ConductorProcess
from tests.test_browser import open_page

DENSITY_SLIDER = ".param[data-param=density] input"
LEVEL_FADER = ".control[data-control=level] input"  # the drones' fader, bound to density
NEAR = "([selector, value]) => Math.abs(Number(document.querySelector(selector).value) - value) < 0.006"


@pytest.fixture
async def boss(conductor: ConductorProcess) -> AsyncIterator[TuttiClient]:
    """A conductor-role client that follows the state, as an OSC bridge or a second console would."""
    client = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    await client.connect()
    yield client
    await client.close()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll a condition for up to 10 s."""
    for _ in range(500):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


def density_values(client: TuttiClient) -> list[float]:
    """Every density value the client was sent, in order."""
    return [c["params"]["density"] for c in client.changes if "density" in c.get("params", {})]


async def frames(page: Page, n: int) -> None:
    """Wait until the page has drawn n more display frames."""
    await page.evaluate("n => new Promise(r => { const f = () => (n-- ? requestAnimationFrame(f) : r()); f(); })", n)


async def value(control: Locator) -> float:
    return float(await control.input_value())


async def test_dragging_a_console_slider_moves_its_parameter_all_the_way(
    browser: Browser, conductor: ConductorProcess, boss: TuttiClient
) -> None:
    console = await open_page(browser, f"{conductor.url}/console?token={TOKENS['conductor']}")
    drones = await open_page(browser, f"{conductor.url}/perform?part=drones&token={TOKENS['performer']}")
    slider = console.locator(DENSITY_SLIDER)
    box = await slider.bounding_box()
    assert box is not None
    y, left, width = box["y"] + box["height"] / 2, box["x"] + box["width"] * 0.1, box["width"] * 0.8
    await console.mouse.move(left, y)
    await console.mouse.down()
    for step in range(1, 21):  # a hand's fade: a move every other frame or so
        await console.mouse.move(left + width * step / 20, y)
        await frames(console, 2)
    await console.mouse.up()
    final = await value(slider)
    assert final > 0.8

    async def landed() -> bool:
        values = density_values(boss)
        return bool(values) and values[-1] == pytest.approx(final)

    await until(landed, f"the conductor's density ends on the slider's {final}")
    values = density_values(boss)
    assert len(set(values)) >= 5, f"a fade, not a jump: {values}"
    assert values == sorted(values), "the values come in the order they were moved"
    # And the drones' fader, bound to density, ends there too.
    await drones.wait_for_function(NEAR, arg=[LEVEL_FADER, final], timeout=5000)
    for page in (console, drones):
        assert page.errors == []  # type: ignore[attr-defined]


async def test_a_performers_fader_and_the_console_follow_an_outside_change(
    browser: Browser, conductor: ConductorProcess, boss: TuttiClient
) -> None:
    console = await open_page(browser, f"{conductor.url}/console?token={TOKENS['conductor']}")
    drones = await open_page(browser, f"{conductor.url}/perform?part=drones&token={TOKENS['performer']}")
    for target in (0.77, 0.12):
        assert (await boss.command("param", name="density", value=target))["ok"]
        await drones.wait_for_function(NEAR, arg=[LEVEL_FADER, target], timeout=5000)
        await console.wait_for_function(NEAR, arg=[DENSITY_SLIDER, target], timeout=5000)
    for page in (console, drones):
        assert page.errors == []  # type: ignore[attr-defined]


async def test_a_held_fader_is_not_moved_until_it_is_let_go(
    browser: Browser, conductor: ConductorProcess, boss: TuttiClient
) -> None:
    drones = await open_page(browser, f"{conductor.url}/perform?part=drones&token={TOKENS['performer']}")
    fader = drones.locator(LEVEL_FADER)
    box = await fader.bounding_box()
    assert box is not None
    await drones.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await drones.mouse.down()  # and held
    held = await value(fader)

    async def sent() -> bool:
        values = density_values(boss)
        return bool(values) and values[-1] == pytest.approx(held)

    await until(sent, f"the fader's {held} reaches the conductor")
    outside = 0.95 if held < 0.5 else 0.05
    assert (await boss.command("param", name="density", value=outside))["ok"]
    await drones.wait_for_function("v => window.tutti.param('density') === v", arg=outside, timeout=5000)
    await frames(drones, 10)  # the page has had frames enough to move it, had it wanted to
    assert await value(fader) == held

    await drones.mouse.up()
    await drones.wait_for_function(NEAR, arg=[LEVEL_FADER, outside], timeout=5000)
    assert drones.errors == []  # type: ignore[attr-defined]


async def test_a_refused_value_is_said_beside_its_slider(browser: Browser, conductor: ConductorProcess) -> None:
    console = await open_page(browser, f"{conductor.url}/console?token={TOKENS['conductor']}")
    # A console whose slider reaches past the parameter's range, as one for an older score would.
    await console.eval_on_selector(
        DENSITY_SLIDER, "el => { el.min = -1; el.value = -1; el.dispatchEvent(new Event('input')); }"
    )
    refusal = console.locator(".param[data-param=density] .refusal")
    await refusal.wait_for(state="visible", timeout=5000)
    assert (await refusal.inner_text()).startswith("refused: ")
    # Nothing moved: the slider goes back to where the parameter is.
    await console.wait_for_function(NEAR, arg=[DENSITY_SLIDER, 0.3], timeout=5000)
