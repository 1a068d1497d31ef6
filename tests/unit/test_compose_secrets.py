"""docker-compose.yml asks for every secret and ships none: no LiveKit --dev (its key pair
is public), no MinIO minioadmin, no variable with a default, each one named in .env.example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
# ${NAME}, ${NAME:?message}, ${NAME:-default}, ... ($$ is a literal dollar for the container)
REFERENCE = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?:(:?[?\-+])([^}]*))?\}")
KNOWN_DEFAULTS = ("minioadmin", "devkey", "change-me", "changeme", "password")


def _compose() -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return parsed


def _values(node: Any) -> list[str]:
    """Every string value in the parsed file (not the keys, not the comments)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _values(value)]
    if isinstance(node, list):
        return [s for item in node for s in _values(item)]
    return []


def test_every_variable_is_required_and_documented() -> None:
    references = [ref for value in _values(_compose()) for ref in REFERENCE.findall(value)]
    names = {name for name, _, _ in references}
    assert {"MONGO_PASSWORD", "MINIO_ROOT_PASSWORD", "LIVEKIT_API_SECRET"} <= names
    for name, operator, message in references:
        assert operator == ":?" and message.startswith(f"set {name}"), name
    example = (ROOT / ".env.example").read_text()
    for name in names:
        assert re.search(rf"(?m)^#? ?{name}=", example), f"{name} is not in .env.example"


def test_no_service_runs_with_a_public_or_default_credential() -> None:
    services = _compose()["services"]
    livekit = services["livekit"]
    assert "--dev" not in livekit["command"]
    assert livekit["environment"]["LIVEKIT_KEYS"].startswith("${LIVEKIT_API_KEY:?")
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"].startswith(
        "${MINIO_ROOT_PASSWORD:?"
    )
    assert "--requirepass" in services["redis"]["command"]
    assert "--keyFile" in services["mongo"]["command"]
    for value in _values(services):
        literal = re.sub(r"\$\$[A-Z0-9_]+", "", REFERENCE.sub("", value)).lower()
        for default in KNOWN_DEFAULTS:
            assert default not in literal, (default, value)
    gateway = services["gateway"]["environment"]
    assert "${MONGO_PASSWORD:?" in gateway["MONGODB_URL"]
    assert gateway["S3_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD:?")
    assert gateway["LIVEKIT_API_SECRET"].startswith("${LIVEKIT_API_SECRET:?")
