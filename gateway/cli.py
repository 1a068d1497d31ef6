"""The `voice-gateway` command: `serve` runs the gateway, `demo` places a simulated call."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import Iterator

import uvicorn

from gateway.app import create_app
from gateway.logs import configure_logging
from gateway.settings import Settings
from storage import EmbeddedFerretDB


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[Settings]:
    """Settings whose `mongodb_url` is reachable: the configured server, or the embedded one."""
    if settings.mongodb_url is not None:
        yield settings
        return
    data_dir = settings.data_dir / "ferretdb"
    with EmbeddedFerretDB(data_dir=data_dir, port=settings.ferretdb_port) as server:
        yield settings.model_copy(update={"mongodb_url": server.url})


def _uvicorn_config(settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
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
    from gateway.demo import run_demo_call

    configure_logging("WARNING", json_format=settings.log_json)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    settings = settings.model_copy(update={"public_url": base}).with_runtime_secrets()
    with _database(settings) as ready:
        where = "embedded FerretDB, files in " + str(ready.data_dir.resolve())
        if settings.mongodb_url is not None:
            where = "MONGODB_URL"
        _out(f"database: {ready.mongodb_url} (db {ready.mongodb_db!r}, {where})")
        server = uvicorn.Server(_uvicorn_config(ready, host="127.0.0.1", port=port))
        return asyncio.run(run_demo_call(server, ready, base_url=base, out=_out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument(
        "--host", default=None, help="listen address (default: HOST or 127.0.0.1)"
    )
    serve_cmd.add_argument("--port", type=int, default=None, help="port (default: PORT or 8080)")
    commands.add_parser("demo", help="start the gateway and place a simulated Twilio call")
    args = parser.parse_args(argv)

    settings = Settings()
    if args.command == "serve":
        host = args.host or settings.host
        port = args.port if args.port is not None else settings.port
        return serve(settings, host=host, port=port)
    return demo(settings)


if __name__ == "__main__":
    sys.exit(main())
