"""The `voice-gateway` command: `serve` runs the gateway, `demo` places a simulated call,
`create-key` / `revoke-key` manage API keys (there is no public endpoint that makes keys),
`numbers` is the operator's word on phone numbers (assign, reserve, release, list)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from pydantic import SecretStr

from gateway.connections import deadline_protocol
from gateway.errors import ConfigError
from gateway.logs import configure_logging
from gateway.server import GatewayServer
from gateway.settings import Settings
from gateway.workers import default_workers, supervise_workers
from gateway.ws_protocol import FastFrameProtocol
from storage import (
    Database,
    EmbeddedFerretDB,
    NotFound,
    StorageError,
    ferretdb_binary,
    normalize_e164,
    open_database,
    redact_url,
)


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
    with EmbeddedFerretDB(binary=binary, data_dir=data_dir) as server:
        yield settings.model_copy(update={"mongodb_url": server.url})


def gateway_server(
    settings: Settings,
    *,
    host: str,
    port: int,
    on_started: Callable[[], None] | None = None,
) -> GatewayServer:
    """uvicorn serving the gateway's app with its bounds; SIGTERM drains it (live calls go
    on, bounded by DRAIN_TIMEOUT_S); event streams end as it stops."""
    # Imported here: `serve --workers N`'s supervisor runs this module without the app
    # (LiveKit's WebRTC, the providers); only the processes that serve load it.
    from gateway.app import create_app, drain, end_event_streams

    app = create_app(settings)
    config = uvicorn.Config(
        app,
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
        ws=FastFrameProtocol,
        ws_max_size=settings.max_ws_message_bytes + 1024,
        ws_ping_interval=None,
        # Media Streams carry base64 audio, which deflate barely shrinks, at 50 messages a
        # second per call each way: compressing them cost more CPU than the rest of a frame.
        ws_per_message_deflate=False,
        lifespan="on",
    )
    return GatewayServer(
        config,
        before_shutdown=functools.partial(end_event_streams, app),
        drain=functools.partial(drain, app),
        on_started=on_started,
    )


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> int:
    """Run the gateway until interrupted: in this process, or in `workers` processes on one
    port (`gateway.workers`) over one database."""
    configure_logging(settings.log_level, json_format=settings.log_json)
    with _database(settings) as ready:
        if workers > 1:
            assert ready.mongodb_url is not None
            return supervise_workers(
                count=workers, host=host, port=port, mongodb_url=ready.mongodb_url
            )
        gateway_server(ready, host=host, port=port).run()
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
        _out(f"database: {redact_url(ready.mongodb_url or '')} (db {ready.mongodb_db!r}, {where})")
        key_id = None
        if own_key:
            # The demo reads its call back through the API with a key of its own, revoked after.
            key_id, secret = asyncio.run(_create_demo_key(ready))
            ready = ready.model_copy(update={"gateway_api_key": SecretStr(secret)})
        server = gateway_server(ready, host="127.0.0.1", port=port)
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


async def _with_database(settings: Settings, work: Callable[[Database], Awaitable[int]]) -> int:
    assert settings.mongodb_url is not None
    database = await open_database(settings.mongodb_url, settings.mongodb_db)
    try:
        return await work(database)
    finally:
        await database.close()


async def _assign_number(db: Database, number: str, org: str | None) -> int:
    """Give `number` to organisation `org` (None: reserve it), off every other's assistants."""
    org_id = None
    if org is not None:
        found = await db.accounts.organization_named(org)
        if found is None:
            sys.stderr.write(f"voice-gateway: no organisation named {org!r}\n")
            return 1
        org_id = found.id
    names = {o.id: o.name for o in await db.accounts.organizations()}
    previous = await db.numbers.assign(number, org_id)
    was = "free"
    if previous is not None:
        was = "reserved" if previous.org_id is None else repr(names.get(previous.org_id, "?"))
    _out(f"{number}: {'reserved' if org is None else 'assigned to ' + repr(org)} (was {was})")
    for assistant in await db.assistants.detach_number(number, keep_org=org_id):
        owner = names.get(assistant.org_id, assistant.org_id)
        _out(f"  taken off assistant {assistant.id} of {owner!r}")
    for trunk in await db.sip.trunks_with_number(number):
        if trunk.org_id != org_id:
            owner = names.get(trunk.org_id, trunk.org_id)
            _out(f"  warning: {trunk.kind} trunk {trunk.id} of {owner!r} still lists it")
    return 0


async def _release_number(db: Database, number: str) -> int:
    try:
        previous = await db.numbers.release(number, org_id=None)
    except NotFound:
        sys.stderr.write(f"voice-gateway: {number} is not registered\n")
        return 1
    _out(f"{number}: released")
    for assistant in await db.assistants.detach_number(number, keep_org=None):
        _out(f"  taken off assistant {assistant.id}")
    if previous.org_id is not None:
        for trunk in await db.sip.trunks_with_number(number, org_id=previous.org_id):
            _out(f"  warning: {trunk.kind} trunk {trunk.id} still lists it")
    return 0


async def _list_numbers(db: Database, org: str | None) -> int:
    names = {o.id: o.name for o in await db.accounts.organizations()}
    registered = {r.number: r for r in await db.numbers.entries()}
    for record in registered.values():
        holder = "(reserved)" if record.org_id is None else names.get(record.org_id, "?")
        if org is None or holder == org:
            _out(f"{record.number}  {holder}  {record.assigned_by}  {record.created_at:%Y-%m-%d}")
    for number, orgs in sorted((await db.numbers.used_numbers()).items()):
        holder_id = registered[number].org_id if number in registered else None
        strays = sorted(names.get(o, o) for o in orgs if o != holder_id)
        if strays and (org is None or org in strays):
            _out(f"{number}  unregistered use by: {', '.join(strays)}")
    return 0


def numbers(settings: Settings, *, action: str, number: str | None, org: str | None) -> int:
    """The operator's commands on the phone-number registry."""
    configure_logging("WARNING", json_format=settings.log_json)
    if number is not None:
        try:
            number = normalize_e164(number)
        except ValueError as exc:
            sys.stderr.write(f"voice-gateway: {exc}\n")
            return 2
    work: Callable[[Database], Awaitable[int]]
    if action == "list":
        work = functools.partial(_list_numbers, org=org)
    else:
        assert number is not None
        if action == "release":
            work = functools.partial(_release_number, number=number)
        else:  # assign (to `org`) or reserve (org None)
            work = functools.partial(_assign_number, number=number, org=org)
    try:
        with _database(settings) as ready:
            return asyncio.run(_with_database(ready, work))
    except StorageError as exc:
        sys.stderr.write(f"voice-gateway: {exc}\n")
        return 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument(
        "--host", default=None, help="listen address (default: HOST or 127.0.0.1)"
    )
    serve_cmd.add_argument("--port", type=int, default=None, help="port (default: PORT or 8080)")
    serve_cmd.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="gateway processes on the one port (default: WORKERS, or one per core); "
        "1 runs the gateway in this process",
    )
    commands.add_parser("demo", help="start the gateway and place a simulated Twilio call")
    key_cmd = commands.add_parser("create-key", help="make an API key and print it once")
    key_cmd.add_argument("--org", required=True, help="organisation name (made if missing)")
    key_cmd.add_argument("--name", default="admin", help="a label for the key")
    revoke_cmd = commands.add_parser("revoke-key", help="revoke an API key by its id")
    revoke_cmd.add_argument("key_id")
    numbers_cmd = commands.add_parser(
        "numbers", help="assign, reserve, release or list phone numbers (operator only)"
    )
    number_actions = numbers_cmd.add_subparsers(dest="action", required=True)
    assign_cmd = number_actions.add_parser(
        "assign", help="give a number to an organisation, whoever holds it"
    )
    assign_cmd.add_argument("number", help="E.164, e.g. +15551234567")
    assign_cmd.add_argument("--org", required=True, help="organisation name")
    reserve_cmd = number_actions.add_parser(
        "reserve", help="hold a number back: no organisation may claim it"
    )
    reserve_cmd.add_argument("number")
    release_cmd = number_actions.add_parser("release", help="free a number")
    release_cmd.add_argument("number")
    list_cmd = number_actions.add_parser("list", help="the registry, and numbers in dispute")
    list_cmd.add_argument("--org", default=None, help="only this organisation's")
    args = parser.parse_args(argv)

    settings = Settings()
    try:
        return _run(args, settings)
    except ConfigError as exc:  # settings that cannot work: say why, no traceback
        sys.stderr.write(f"voice-gateway: {exc}\n")
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "create-key":
        return create_key(settings, org=args.org, name=args.name)
    if args.command == "revoke-key":
        return revoke_key(settings, key_id=args.key_id)
    if args.command == "numbers":
        number, org = getattr(args, "number", None), getattr(args, "org", None)
        return numbers(settings, action=args.action, number=number, org=org)
    if args.command == "serve":
        host = args.host or settings.host
        port = args.port if args.port is not None else settings.port
        workers = args.workers or settings.workers or default_workers()
        return serve(settings, host=host, port=port, workers=workers)
    return demo(settings)


if __name__ == "__main__":
    sys.exit(main())
