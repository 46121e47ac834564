"""``curbwatch server ...``, ``curbwatch devices ...`` and ``curbwatch audit ...`` commands.

Wire them into the main command line with::

    from curbwatch.server.cli import audit_app, devices_app, server_app
    app.add_typer(server_app, name="server")
    app.add_typer(devices_app, name="devices")
    app.add_typer(audit_app, name="audit")

SQLAlchemy and paho are imported inside the commands so ``curbwatch --help`` stays light.
``python -m curbwatch.server.cli`` runs the groups on their own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from curbwatch.server.settings import ServerSettings

server_app = typer.Typer(no_args_is_help=True, help="Run the server: migrations and MQTT ingest.")
devices_app = typer.Typer(no_args_is_help=True, help="Register edge devices and show their health.")
audit_app = typer.Typer(no_args_is_help=True, help="Check the hash-chained audit log.")
users_app = typer.Typer(no_args_is_help=True, help="Operator accounts for the web UI and the API.")

DatabaseOption = Annotated[
    str | None, typer.Option("--database-url", help="Overrides CURBWATCH_DATABASE_URL.", show_default=False)
]


def _settings(database_url: str | None, **overrides: object) -> ServerSettings:
    from curbwatch.server.settings import settings_from_options

    return settings_from_options(database_url=database_url, **overrides)


@server_app.command("migrate")
def migrate_command(database_url: DatabaseOption = None) -> None:
    """Create or upgrade the database schema (alembic ``upgrade head``).

    Examples:
        curbwatch server migrate
        curbwatch server migrate --database-url postgresql+psycopg://curbwatch@db/curbwatch
    """
    from curbwatch.server.db import DatabaseError, migrate

    settings = _settings(database_url)
    try:
        migrate(settings.database_url)
    except DatabaseError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo("database is at the latest revision")


@server_app.command("ingest")
def ingest_command(
    database_url: DatabaseOption = None,
    worker: Annotated[str | None, typer.Option(help="Worker name; fixes the MQTT client id.")] = None,
) -> None:
    """Run one ingest worker until SIGTERM or Ctrl-C (settings from CURBWATCH_* variables).

    Examples:
        CURBWATCH_MQTT_HOST=127.0.0.1 curbwatch server ingest --worker a
        curbwatch server ingest --worker b   # a second worker shares the load
    """
    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.ingest import IngestError, IngestWorker

    settings = _settings(database_url, worker_name=worker)
    engine = make_engine(settings.database_url)
    try:
        IngestWorker(settings, make_session_factory(engine)).run_until_stopped()
    except IngestError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()


@server_app.command("web")
def web_command(
    database_url: DatabaseOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (CURBWATCH_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (CURBWATCH_HTTP_PORT).")] = None,
) -> None:
    """Serve the operator UI, the REST API (/docs) and Open311 until Ctrl-C.

    Examples:
        curbwatch server web
        CURBWATCH_CASE_CONFIG=city.yaml curbwatch server web --host 0.0.0.0 --port 8080
    """
    import uvicorn

    from curbwatch.schema.yamlio import ConfigError
    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.web.app import create_app

    settings = _settings(database_url, http_host=host, http_port=port)
    engine = make_engine(settings.database_url)
    try:
        app = create_app(settings, make_session_factory(engine))
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    try:
        uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="info")
    finally:
        engine.dispose()


@server_app.command("forward")
def forward_command(
    database_url: DatabaseOption = None,
    once: Annotated[bool, typer.Option("--once", help="Send what is due now, then exit.")] = False,
    poll_s: Annotated[float, typer.Option(min=0.1, help="Seconds between rounds when idle.")] = 5.0,
) -> None:
    """Forward filed cases to the upstream Open311 platforms of the case config, with retries.

    Examples:
        CURBWATCH_CASE_CONFIG=city.yaml curbwatch server forward
        curbwatch server forward --once   # e.g. from cron
    """
    import signal
    import threading

    import httpx

    from curbwatch.schema.yamlio import ConfigError
    from curbwatch.server.config import load_case_config
    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.device_link import MqttDevicePublisher
    from curbwatch.server.evidence import EvidenceStore
    from curbwatch.server.open311.forwarding import ForwardingWorker
    from curbwatch.server.web.api.evidence import evidence_link
    from curbwatch.server.web.context import AppContext, load_secret_key, utc_now

    settings = _settings(database_url)
    try:
        config = load_case_config(settings.case_config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    # The same context the web app builds, so media links are signed with the deployment's key.
    context = AppContext(
        settings=settings,
        config=config,
        session_factory=factory,
        evidence=EvidenceStore(settings.evidence_dir),
        secret_key=load_secret_key(settings.secret_key_file),
        publisher=MqttDevicePublisher(settings),
    )
    try:
        with httpx.Client(headers={"User-Agent": "curbwatch-forwarder"}) as client:
            worker = ForwardingWorker(
                factory,
                config,
                client,
                media_link=lambda sha256: evidence_link(context, sha256, signed=True),
                clock=utc_now,
                poll_interval_s=poll_s,
            )
            if once:
                typer.echo(str(worker.run_once(utc_now())))
                return
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            worker.run_forever(stop)
    finally:
        engine.dispose()


@users_app.command("add")
def users_add(
    username: str,
    role: Annotated[str, typer.Option(help="operator, dispatcher, supervisor or admin.")] = "operator",
    display_name: Annotated[str, typer.Option(help="Name shown in the UI.")] = "",
    password: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, envvar="CURBWATCH_NEW_PASSWORD"),
    ] = "",
    database_url: DatabaseOption = None,
) -> None:
    """Create an account (the password is asked twice, or read from CURBWATCH_NEW_PASSWORD).

    Examples:
        curbwatch users add alice --role operator
        CURBWATCH_NEW_PASSWORD=s3cret-pass curbwatch users add bob --role supervisor --display-name "Bob Li"
    """
    from datetime import UTC, datetime

    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.users import UserError, add_user

    engine = make_engine(_settings(database_url).database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            add_user(session, username, password, role, display_name=display_name, at=datetime.now(UTC))
    except UserError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    typer.echo(f"user {username} ({role}) created")


@devices_app.command("add")
def devices_add(device_id: str, database_url: DatabaseOption = None) -> None:
    """Register a device and print its HMAC key (hex) once: put it in the device's edge.yaml.

    Example:
        curbwatch devices add edge-0001
    """
    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.devices import DeviceError, add_device

    engine = make_engine(_settings(database_url).database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            key_hex = add_device(session, device_id)
    except DeviceError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    typer.echo(key_hex)


@devices_app.command("list")
def devices_list(database_url: DatabaseOption = None) -> None:
    """List devices with their last status, heartbeat time and highest stored seq.

    Example:
        curbwatch devices list
    """
    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.devices import list_devices

    engine = make_engine(_settings(database_url).database_url)
    try:
        with make_session_factory(engine)() as session:
            for device in list_devices(session):
                heartbeat = device.last_heartbeat_at.isoformat() if device.last_heartbeat_at else "-"
                typer.echo(f"{device.id}\t{device.last_status or '-'}\t{heartbeat}\tseq={device.last_seq}")
    finally:
        engine.dispose()


@audit_app.command("verify")
def audit_verify(database_url: DatabaseOption = None) -> None:
    """Check that no audit entry was altered, deleted or inserted; exit 1 with one line per problem.

    Examples:
        curbwatch audit verify
        curbwatch audit verify --database-url postgresql+psycopg://curbwatch@db/curbwatch
    """
    from sqlalchemy import func, select

    from curbwatch.server.audit import verify_chain
    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.tables import AuditLog

    engine = make_engine(_settings(database_url).database_url)
    try:
        with make_session_factory(engine)() as session:
            problems = verify_chain(session)
            count = session.scalar(select(func.count()).select_from(AuditLog))
    finally:
        engine.dispose()
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        typer.echo(f"audit log damaged: {len(problems)} problems in {count} entries", err=True)
        raise typer.Exit(1)
    typer.echo(f"audit log intact: {count} entries")


_standalone = typer.Typer(no_args_is_help=True)
_standalone.add_typer(server_app, name="server")
_standalone.add_typer(devices_app, name="devices")
_standalone.add_typer(audit_app, name="audit")
_standalone.add_typer(users_app, name="users")

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    _standalone()
