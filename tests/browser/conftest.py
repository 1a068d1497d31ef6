"""Fixtures of the browser tests: a real gateway process and headless Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.browser import LaunchedBrowser, launch_chromium
from tests.integration.conftest import GatewayProcess, run_gateway


@pytest.fixture(scope="module")
def gateway(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`voice-gateway serve` on loopback, serving the installed browser packages."""
    with run_gateway(mongo_url, tmp_path_factory.mktemp("gateway")) as process:
        yield process


@pytest.fixture
async def chromium() -> AsyncIterator[LaunchedBrowser]:
    """Headless Debian Chromium (no fake devices); pages come from `loopback_page`."""
    async with launch_chromium() as launched:
        yield launched
