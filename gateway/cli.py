"""The `voice-gateway` command: `serve` runs the gateway, `demo` places a simulated call,
`create-key` / `revoke-key` manage API keys (there is no public endpoint that makes keys)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import Iterator

import uvicorn
from pydantic import SecretStr

from gateway.app import create_app
from gateway.connections import deadline_protocol
from gateway.logs import configure_logging
from gateway.settings import Settings
from storage import EmbeddedFerretDB, StorageError, ferretdb_binary, open_database


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[Settings]:
    """Settings whose `mongodb_url` is reachable: the configured server, or the embedded one."""
    if settings.mongodb_url is not None:
        yield settings
        return
    binary = ferretdb_binary(explicit=settings.ferretdb_bin, cache_dir=settings.voice_gateway_cache)
    data_dir = settings.data_dir / "ferretdb"
    with EmbeddedFerretDB(binary=binary, data_dir=data_dir, port=settings.ferretdb_port) as server:
        yield settings.model_copy(update={"mongodb_url": server.url})


def _uvicorn_config(settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        # Each request's head and body within HTTP_HEADER_TIMEOUT_S (the slowloris bound).
        http=deadline_protocol(
            timeout_s=settings.http_header_timeout_s,
            max_head_bytes=settings.http_max_header_bytes,
        ),
        limit_concurrency=settings.http_limit_concurrency,
        timeout_keep_alive=settings.http_keep_alive_s,
        ws_max_size=settings.max_ws_message_bytes + 1024,
        ws_ping_interval=None,
        lifespan="on",
    )


def serve(settings: Settings, *, host: str, port: int) -> int:
    """Run the gateway until interrupted."""
    configure_logging(settings.log_level, json_format=settings.log_json)
    with _database(settings) as ready:
        uvicorn.Server(_uvicorn_config(ready, host=host, port=port)).run()
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo(settings: Settings) -> int:
    """Start the gateway on embedded defaults and place one simulated Twilio call."""
    from gateway.demo.scripted_call import run_demo_call

    configure_logging("WARNING", json_format=settings.log_json)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    own_key = settings.gateway_api_key is None
    settings = settings.model_copy(update={"public_url": base}).with_runtime_secrets()
    with _database(settings) as ready:
        where = "embedded FerretDB, files in " + str(ready.data_dir.resolve())
        if settings.mongodb_url is not None:
            where = "MONGODB_URL"
        _out(f"database: {ready.mongodb_url} (db {ready.mongodb_db!r}, {where})")
        key_id = None
        if own_key:
            # The demo reads its call back through the API with a key of its own, revoked after.
            key_id, secret = asyncio.run(_create_demo_key(ready))
            ready = ready.model_copy(update={"gateway_api_key": SecretStr(secret)})
        server = uvicorn.Server(_uvicorn_config(ready, host="127.0.0.1", port=port))
        try:
            return asyncio.run(run_demo_call(server, ready, base_url=base, out=_out))
        finally:
            if key_id is not None:
                asyncio.run(_revoke_key(ready, key_id))


async def _create_demo_key(settings: Settings) -> tuple[str, str]:
    assert settings.mongodb_url is not None
    database = await open_database(settings.mongodb_url, settings.mongodb_db)
    try:
        org = await database.accounts.ensure_default_organization(settings.gateway_org)
        record, secret = await database.accounts.create_key(org.id, name="demo")
        return record.id, secret
    finally:
        await database.close()


async def _create_key(settings: Settings, org: str, name: str) -> tuple[str, str]:
    assert settings.mongodb_url is not None
    database = await open_database(settings.mongodb_url, settings.mongodb_db)
    try:
        organization = await database.accounts.ensure_organization(org)
        record, secret = await database.accounts.create_key(organization.id, name=name)
        return record.id, secret
    finally:
        await database.close()


async def _revoke_key(settings: Settings, key_id: str) -> None:
    assert settings.mongodb_url is not None
    database = await open_database(settings.mongodb_url, settings.mongodb_db)
    try:
        await database.accounts.revoke_key(key_id)
    finally:
        await database.close()


def create_key(settings: Settings, *, org: str, name: str) -> int:
    """Make an API key for organisation `org` (made if missing) and print it, once."""
    configure_logging("WARNING", json_format=settings.log_json)
    try:
        with _database(settings) as ready:
            key_id, secret = asyncio.run(_create_key(ready, org, name))
    except StorageError as exc:
        sys.stderr.write(f"voice-gateway: {exc}\n")
        return 1
    sys.stderr.write(f"API key {key_id} for organisation {org!r} (shown once, store it now):\n")
    _out(secret)
    return 0


def revoke_key(settings: Settings, *, key_id: str) -> int:
    """Revoke an API key by id; requests with it are refused from then on."""
    configure_logging("WARNING", json_format=settings.log_json)
    try:
        with _database(settings) as ready:
            asyncio.run(_revoke_key(ready, key_id))
    except StorageError as exc:
        sys.stderr.write(f"voice-gateway: {exc}\n")
        return 1
    _out(f"revoked {key_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument(
        "--host", default=None, help="listen address (default: HOST or 127.0.0.1)"
    )
    serve_cmd.add_argument("--port", type=int, default=None, help="port (default: PORT or 8080)")
    commands.add_parser("demo", help="start the gateway and place a simulated Twilio call")
    key_cmd = commands.add_parser("create-key", help="make an API key and print it once")
    key_cmd.add_argument("--org", required=True, help="organisation name (made if missing)")
    key_cmd.add_argument("--name", default="admin", help="a label for the key")
    revoke_cmd = commands.add_parser("revoke-key", help="revoke an API key by its id")
    revoke_cmd.add_argument("key_id")
    args = parser.parse_args(argv)

    settings = Settings()
    if args.command == "create-key":
        return create_key(settings, org=args.org, name=args.name)
    if args.command == "revoke-key":
        return revoke_key(settings, key_id=args.key_id)
    if args.command == "serve":
        host = args.host or settings.host
        port = args.port if args.port is not None else settings.port
        return serve(settings, host=host, port=port)
    return demo(settings)


if __name__ == "__main__":
    sys.exit(main())
