"""Browser tooling benchmark: what the browser tests and pages cost.

- scripts/ensure-web-assets.sh into a fresh cache with an empty npm cache (first install)
  and again (already installed);
- headless Debian Chromium launched by Playwright (launch to ready);
- /docs in Chromium against a real gateway (navigation to the first operation drawn);
- a WebRTC call over a real livekit-server on loopback: from the page's joinCall() to
  the first loud frame of the remote (Python) participant's tone, measured in the page.

    python bench/browser_bench.py [--installs 3] [--launches 10] [--docs 10] [--calls 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.settings import Settings
from gateway.web_assets import StaticDirectory, WebAssets
from tests.browser import launch_chromium, loopback_page, serve_routes
from tests.browser.test_webrtc_loopback import PAGES, ToneParticipant, token, write_tone_wav
from tests.ferretdb_server import embedded_ferretdb
from tests.integration.conftest import run_gateway
from tests.livekit_server import run_livekit_server

ROOT = Path(__file__).resolve().parents[1]


def summary(label: str, values_s: list[float]) -> None:
    ms = sorted(v * 1000 for v in values_s)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(
        f"{label:<44} n={len(ms):<3} median {statistics.median(ms):8.1f} ms   "
        f"p95 {p95:8.1f} ms   min {ms[0]:8.1f} ms   max {ms[-1]:8.1f} ms"
    )


def bench_install(runs: int) -> None:
    first, cached = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as npm:
            env = {**os.environ, "VOICE_GATEWAY_CACHE": cache, "npm_config_cache": npm}
            script = ["bash", str(ROOT / "scripts" / "ensure-web-assets.sh")]
            for bucket in (first, *[cached] * 5):
                started = time.perf_counter()
                subprocess.run(script, env=env, check=True, capture_output=True)
                bucket.append(time.perf_counter() - started)
    summary("ensure-web-assets.sh, first install", first)
    summary("ensure-web-assets.sh, already installed", cached)


async def bench_launch(runs: int) -> None:
    times = []
    for _ in range(runs):
        async with launch_chromium() as launched:
            times.append(launched.launch_s)
    summary("chromium launch (Playwright, headless)", times)


async def bench_docs(runs: int) -> None:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with embedded_ferretdb(work) as db, run_gateway(db.url, work) as gw:
            async with launch_chromium() as launched:
                for _ in range(runs):
                    async with loopback_page(launched.browser) as (page, guard):
                        started = time.perf_counter()
                        await page.goto(gw.base_url + "/docs")
                        await page.locator(".opblock").first.wait_for(state="visible")
                        times.append(time.perf_counter() - started)
                        assert guard.left_loopback == []
    summary("/docs: navigation to operations drawn", times)


async def bench_calls(runs: int) -> None:
    connect, first_audio = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wav = work / "mic.wav"
        write_tone_wav(wav, hz=880.0, seconds=30.0)
        assets = WebAssets(Settings().web_assets_dir)
        routes = [*assets.routes(), StaticDirectory(PAGES, "/test").route()]
        with run_livekit_server(work) as lk, serve_routes(routes) as base:
            ws_url = lk.url.replace("http://", "ws://")
            async with launch_chromium(fake_microphone=wav) as launched:
                for n in range(runs):
                    room = f"bench-{n}"
                    agent = ToneParticipant()
                    await agent.join(lk.url, token(lk, room, "agent"))
                    try:
                        async with loopback_page(launched.browser) as (page, _):
                            jwt = token(lk, room, "browser")
                            await page.goto(
                                f"{base}/test/webrtc.html?url={ws_url}&token={jwt}&raw=1"
                            )
                            deadline = time.monotonic() + 60
                            while True:
                                r = await page.evaluate("window.spikeReport()")
                                if r["error"]:
                                    raise RuntimeError(r["error"])
                                if r["firstRemoteAudioAt"] is not None:
                                    break
                                if time.monotonic() > deadline:
                                    raise RuntimeError("no remote audio in the page")
                                await asyncio.sleep(0.05)
                            connect.append((r["connectedAt"] - r["startedAt"]) / 1000)
                            first_audio.append((r["firstRemoteAudioAt"] - r["startedAt"]) / 1000)
                    finally:
                        await agent.leave()
    summary("web call: joinCall() to room connected", connect)
    summary("web call: joinCall() to first remote audio", first_audio)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--installs", type=int, default=3)
    parser.add_argument("--launches", type=int, default=10)
    parser.add_argument("--docs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    bench_install(args.installs)
    await bench_launch(args.launches)
    await bench_docs(args.docs)
    await bench_calls(args.calls)


if __name__ == "__main__":
    asyncio.run(main())
