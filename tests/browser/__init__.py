"""The browser harness: headless Chromium (Debian's `chromium` package) driven by async
Playwright, for the tests of pages the gateway serves: no browser download, no network
beyond loopback. (The package's test modules are the browser tests.)

`launch_chromium()` starts Debian's binary with the flags this machine needs (its closed
network refuses Chromium's background connections) and, with `fake_microphone=`, a
microphone fed from a WAV file (looped; see `fake_microphone_flags`). `LoopbackOnly`
blocks and records every request a page makes that would leave loopback; a test asserts
`guard.left_loopback == []`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    Route,
    WebSocket,
    async_playwright,
)
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from tests.net import free_port

CHROMIUM = Path(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium"))

# Without the background-networking flags Chromium keeps trying Google's hosts, which this
# machine's closed network refuses. Playwright gives every launch a fresh, empty profile
# directory (it refuses --user-data-dir in `args`), so no state is shared between tests.
BASE_FLAGS: tuple[str, ...] = (
    "--no-sandbox",  # the tests run as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--no-pings",
    # Pages play received audio and start an AudioContext without a click.
    "--autoplay-policy=no-user-gesture-required",
)

# WebRTC with every peer on 127.0.0.1: Chromium leaves loopback out of ICE gathering unless
# told otherwise. On a host whose only interface is loopback this flag AND livekit-server's
# `rtc.enable_loopback_candidate: true` (tests/livekit_server.py) are both needed; where
# another interface exists ICE also succeeds on its address without either.
WEBRTC_FLAGS: tuple[str, ...] = ("--allow-loopback-in-peer-connection",)


def fake_microphone_flags(wav: Path) -> tuple[str, ...]:
    """Flags that grant getUserMedia without a prompt and feed the microphone from `wav`
    (16-bit PCM WAV). The file plays in a loop: Debian's Chromium 156 ignores the `%noloop`
    suffix (a 1 s tone with it was still heard 8 s later), so pad a WAV whose speech must
    be heard once with enough silence for the test (`pad_with_silence`)."""
    return (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav.resolve()}",
    )


def pad_with_silence(source: Path, target: Path, *, total_s: float) -> None:
    """`source` (a 16-bit PCM WAV) followed by silence up to `total_s`, written to `target`."""
    with wave.open(str(source), "rb") as inp:
        params = inp.getparams()
        frames = inp.readframes(inp.getnframes())
    if params.sampwidth != 2:
        raise ValueError(f"{source} is not 16-bit PCM")
    frame_bytes = params.nchannels * params.sampwidth
    wanted = int(total_s * params.framerate) * frame_bytes
    with wave.open(str(target), "wb") as out:
        out.setparams(params)
        out.writeframes(frames + b"\x00" * max(0, wanted - len(frames)))


class BrowserMissing(RuntimeError):
    """Debian's chromium is not installed."""


def _require_chromium() -> None:
    """A missing browser fails the test (never a skip), naming what installs it."""
    if not CHROMIUM.exists():
        raise BrowserMissing(
            f"{CHROMIUM} is missing: `scripts/dev.sh test` installs Debian's chromium "
            "(or `apt-get install chromium`); set CHROMIUM_BIN for another binary"
        )


@dataclass(frozen=True)
class LaunchedBrowser:
    browser: Browser
    launch_s: float  # from the launch call until the browser answered


@contextlib.asynccontextmanager
async def launch_chromium(
    *, fake_microphone: Path | None = None, webrtc: bool = False, args: Sequence[str] = ()
) -> AsyncIterator[LaunchedBrowser]:
    """Headless Chromium from `CHROMIUM` until the block ends."""
    _require_chromium()
    flags = [*BASE_FLAGS, *args]
    if webrtc or fake_microphone is not None:
        flags += WEBRTC_FLAGS
    if fake_microphone is not None:
        flags += fake_microphone_flags(fake_microphone)
    async with async_playwright() as pw:
        browser = await _launch(pw, flags)
        try:
            yield browser
        finally:
            await browser.browser.close()


async def _launch(pw: Playwright, flags: list[str]) -> LaunchedBrowser:
    started = time.perf_counter()
    browser = await pw.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=flags, timeout=60_000
    )
    return LaunchedBrowser(browser, time.perf_counter() - started)


def is_loopback_url(url: str) -> bool:
    """True for URLs that stay on this machine's loopback (or never touch the network)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        return True  # data:, blob:, about:, chrome-error: ...
    host = (parts.hostname or "").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class LoopbackOnly:
    """Aborts and records each request (and WebSocket) of a context's pages that is not
    for loopback."""

    left_loopback: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    async def attach(self, context: BrowserContext) -> None:
        await context.route("**/*", self._route)
        context.on("page", self._watch_page)
        for page in context.pages:
            self._watch_page(page)

    def _watch_page(self, page: Page) -> None:
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws: WebSocket) -> None:
        self.requests.append(ws.url)
        if not is_loopback_url(ws.url):
            self.left_loopback.append(ws.url)

    async def _route(self, route: Route) -> None:
        url = route.request.url
        self.requests.append(url)
        if is_loopback_url(url):
            await route.continue_()
        else:
            self.left_loopback.append(url)
            await route.abort("blockedbyclient")


@contextlib.asynccontextmanager
async def loopback_page(browser: Browser) -> AsyncIterator[tuple[Page, LoopbackOnly]]:
    """A page in a fresh context whose requests off loopback are blocked and recorded."""
    context = await browser.new_context()
    try:
        guard = LoopbackOnly()
        await guard.attach(context)
        page = await context.new_page()
        yield page, guard
    finally:
        await context.close()


@contextlib.contextmanager
def serve_routes(routes: Sequence[BaseRoute]) -> Iterator[str]:
    """A Starlette app of `routes` on a loopback port (uvicorn in a thread) until the block
    ends; yields its base URL. For test pages; a real gateway runs as the integration
    tests start it."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=list(routes)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, name="test-pages", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test page server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
