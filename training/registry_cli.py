"""``curbwatch models ...``: the model registry on the command line.

Wire it into the main command line with ``app.add_typer(models_app, name="models")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from curbwatch.training.registry import DEFAULT_REGISTRY

if TYPE_CHECKING:
    from curbwatch.server.models_rollout import TargetView
    from curbwatch.server.settings import ServerSettings
    from curbwatch.training.registry import RegistryEntry

models_app = typer.Typer(no_args_is_help=True, help="The model registry: one card per model version.")

RegistryOption = Annotated[Path, typer.Option("--registry", help="Models folder holding the registry cards.")]


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(1)


@models_app.command("list")
def list_command(registry: RegistryOption = DEFAULT_REGISTRY) -> None:
    """List registered model versions and the plain edge cards beside them.

    Columns: NAME@VERSION, family, input size, classes, mAP50 (edge-onnx), INT8 speed-up at 1 thread
    with its mAP50 change, and where the card is.

    Example:
        curbwatch models list
    """
    from curbwatch.training.registry import Registry, RegistryError

    try:
        rows = Registry(registry).listing()
    except RegistryError as exc:
        _fail(str(exc))
    if not rows:
        typer.echo(f"no models in {registry}")
        return
    lines = [("MODEL", "FAMILY", "INPUT", "CLASSES", "mAP50", "INT8", "CARD")]
    for row in rows:
        card = row.entry.edge_card() if row.entry is not None else row.card
        assert card is not None  # a row holds an entry or a card
        map50, int8 = "-", "-"
        if row.entry is not None and row.entry.metrics is not None:
            map50 = f"{row.entry.metrics.map50:.3f}"
        if row.entry is not None and row.entry.quantization is not None:
            q = row.entry.quantization
            int8 = f"x{q.speed[0].speedup:.2f} {q.map50_delta_points:+.1f}pt" if q.speed else "yes"
        size = "x".join(map(str, card.input_size_hw))
        lines.append(
            (row.ref, card.family.value, size, str(len(card.class_names)), map50, int8, row.card_path)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        typer.echo("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip())


@models_app.command("show")
def show_command(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (newest version when omitted).")],
    registry: RegistryOption = DEFAULT_REGISTRY,
) -> None:
    """Print a model's registry card and check its files are there with the recorded sha256.

    Exit code 1 when the model is unknown or a file is missing or changed.

    Examples:
        curbwatch models show curb-detector
        curbwatch models show curb-detector@4
    """
    from curbwatch.training.registry import Registry, RegistryError

    models = Registry(registry)
    try:
        entry = models.get(ref)
    except RegistryError as exc:
        _fail(str(exc))
    path = models.entry_path(entry.name, entry.version)
    typer.echo(f"# {path}")
    typer.echo(path.read_text(encoding="utf-8").rstrip())
    files = {
        "onnx": entry.file,
        "weights": entry.weights,
        "int8": entry.quantization.file if entry.quantization else None,
    }
    problems = []
    for kind, file_ref in files.items():
        if file_ref is None:
            continue
        problem = models.verify(file_ref)
        typer.echo(f"# {kind}: {models.resolve(file_ref)}: {problem or 'ok'}")
        if problem:
            problems.append(f"{kind} {problem}")
    if problems:
        _fail(f"{entry.ref}: " + "; ".join(problems))


DatabaseOption = Annotated[
    str | None,
    typer.Option("--database-url", help="Server database (default: CURBWATCH_DATABASE_URL)."),
]


@models_app.command("rollout")
def rollout_command(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION of a registered model.")],
    devices: Annotated[str, typer.Option("--devices", help="Comma-separated device ids, in order.")],
    canary: Annotated[
        str | None, typer.Option("--canary", help="The device that goes first (default: the first one).")
    ] = None,
    timeout_s: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the devices' answers.")
    ] = 900.0,
    actor: Annotated[str, typer.Option("--actor", help="Who starts the rollout (audit log).")] = "cli",
    registry: RegistryOption = DEFAULT_REGISTRY,
    database_url: DatabaseOption = None,
) -> None:
    """Send a registered model to devices, the canary first, and follow their answers.

    The model file must still have its recorded sha256. The canary gets the update; the others only
    once it has reported "applied" (a canary that fails or rolls back halts the rollout). The ingest
    worker must be running: it files the devices' answers. The broker comes from CURBWATCH_MQTT_*.
    Exit code 0 when every device applied the model, 1 otherwise (halted, failed, or timed out;
    see `curbwatch models rollout-status ID`). The rollout lives in the database: if this command
    stops (timeout, Ctrl-C, a crash), `curbwatch models rollout-resume` carries it on.

    Examples:
        curbwatch models rollout curb-detector@4 --devices edge-1,edge-2,edge-3 --canary edge-2
        curbwatch models rollout curb-detector@4 --devices edge-1 --timeout 300
    """
    from datetime import UTC, datetime

    from sqlalchemy.exc import SQLAlchemyError

    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.device_link import MqttDevicePublisher
    from curbwatch.server.models_rollout import (
        DeviceRolloutState,
        RolloutError,
        create_rollout,
        drive_rollout,
    )
    from curbwatch.training.registry import RegistryError

    try:
        entry, data = _verified_model(registry, ref)
    except RegistryError as exc:
        _fail(str(exc))
    settings = _settings(database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    publisher = MqttDevicePublisher(settings)
    try:
        with factory() as session, session.begin():
            rollout_id = create_rollout(
                session,
                name=entry.name,
                version=entry.version,
                sha256=entry.file.sha256,
                size_bytes=len(data),
                devices=[device.strip() for device in devices.split(",") if device.strip()],
                canary=canary,
                actor=actor,
                at=datetime.now(UTC),
            )
        typer.echo(f"rollout {rollout_id}: {entry.ref} ({len(data)} bytes, sha256 {entry.file.sha256[:12]})")
        view = drive_rollout(
            factory,
            rollout_id,
            data,
            publisher,
            clock=lambda: datetime.now(UTC),
            timeout_s=timeout_s,
            on_change=lambda target: typer.echo(_target_line(target)),
        )
    except RolloutError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(f"database {settings.database_url}: {exc} (has `curbwatch server migrate` run?)")
    finally:
        publisher.close()
        engine.dispose()
    waiting = [t.device_id for t in view.targets if t.state is DeviceRolloutState.SENT]
    if waiting:
        _fail(
            f"rollout {rollout_id}: timed out after {timeout_s:g} s waiting for {', '.join(waiting)} "
            f"(`curbwatch models rollout-resume {rollout_id}` carries it on)"
        )
    typer.echo(f"rollout {rollout_id}: {view.state.value}")
    if any(t.state is not DeviceRolloutState.APPLIED for t in view.targets):
        raise typer.Exit(1)


@models_app.command("rollout-resume")
def rollout_resume_command(
    rollout_ids: Annotated[
        list[str] | None, typer.Argument(help="Rollout ids (`curbwatch models rollout` printed them).")
    ] = None,
    all_unfinished: Annotated[
        bool, typer.Option("--all", help="Every rollout still waiting on its canary or sending.")
    ] = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout", min=0, help="Seconds to wait for answers per rollout.")
    ] = 900.0,
    resend_after_s: Annotated[
        float,
        typer.Option(
            "--resend-after",
            min=1,
            help="Send again to a device up (heartbeats) but silent this many seconds after it was sent to.",
        ),
    ] = 1800.0,
    registry: RegistryOption = DEFAULT_REGISTRY,
    database_url: DatabaseOption = None,
) -> None:
    """Carry on rollouts whose `curbwatch models rollout` stopped, from where the database says they are.

    Sends to the devices now due: the rest once the canary has applied the model (its answer is
    filed by the ingest worker even with no rollout command running), and, again, any device that
    has not answered for --resend-after seconds although its heartbeats show it is up, since a
    sender that died between recording a send and publishing it left that device without the
    update (same correlation id: a box that already has the command ignores it; a box that is
    away gets the first copy from its broker session). The model is read from the registry by
    the rollout's NAME@VERSION and must still have the sha256 the rollout started with.

    Several copies may run at once (a timer and a person): each device is claimed under the
    rollout's row lock, so none is sent the update twice at the same time. Run `--all --timeout
    60` from a timer every few minutes so that no rollout waits on a person. Exit code 1 when a
    rollout cannot be resumed (unknown id, model missing or changed) or the database cannot be
    read; devices still waiting are not an error. An update the broker does not take fails that
    device, as with `curbwatch models rollout`.

    Examples:
        curbwatch models rollout-resume 3f2a9c0e5b1d4e7f8a6b2c4d1e0f9a8b
        curbwatch models rollout-resume --all --timeout 60
    """
    from datetime import UTC, datetime

    from sqlalchemy.exc import SQLAlchemyError

    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.device_link import MqttDevicePublisher
    from curbwatch.server.models_rollout import (
        RolloutError,
        drive_rollout,
        rollout_status,
        unfinished_rollouts,
    )
    from curbwatch.training.registry import RegistryError

    if bool(rollout_ids) == all_unfinished:
        _fail("name rollout ids or pass --all (not both)")
    settings = _settings(database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    publisher = MqttDevicePublisher(settings)
    problems = []
    try:
        with factory() as session:
            ids = unfinished_rollouts(session) if all_unfinished else list(rollout_ids or [])
        if not ids:
            typer.echo("no unfinished rollouts")
        for rollout_id in ids:
            try:
                with factory() as session:
                    ref = rollout_status(session, rollout_id)
                entry, data = _verified_model(registry, ref.ref)
                if entry.file.sha256 != ref.sha256:
                    raise RolloutError(
                        f"{ref.ref} in {registry} has sha256 {entry.file.sha256}, "
                        f"the rollout sends {ref.sha256}"
                    )
                typer.echo(f"rollout {rollout_id}: {ref.ref} {ref.state.value}")
                view = drive_rollout(
                    factory,
                    rollout_id,
                    data,
                    publisher,
                    clock=lambda: datetime.now(UTC),
                    timeout_s=timeout_s,
                    resend_after_s=resend_after_s,
                    on_change=lambda target: typer.echo(_target_line(target)),
                )
            except (RolloutError, RegistryError) as exc:
                problems.append(f"rollout {rollout_id}: {exc}")
                typer.echo(problems[-1], err=True)
                continue
            typer.echo(f"rollout {rollout_id}: {view.state.value}")
    except SQLAlchemyError as exc:
        _fail(f"database {settings.database_url}: {exc} (has `curbwatch server migrate` run?)")
    finally:
        publisher.close()
        engine.dispose()
    if problems:
        raise typer.Exit(1)


@models_app.command("rollout-status")
def rollout_status_command(
    rollout_id: Annotated[str, typer.Argument(help="The id `curbwatch models rollout` printed.")],
    database_url: DatabaseOption = None,
) -> None:
    """Show a rollout and where each of its devices stands.

    Example:
        curbwatch models rollout-status 3f2a9c0e5b1d4e7f8a6b2c4d1e0f9a8b
    """
    from sqlalchemy.exc import SQLAlchemyError

    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.models_rollout import FINISHED, RolloutError, rollout_status

    url = _settings(database_url).database_url
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            view = rollout_status(session, rollout_id)
    except RolloutError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(f"database {url}: {exc} (has `curbwatch server migrate` run?)")
    finally:
        engine.dispose()
    typer.echo(f"rollout {view.id}: {view.ref} {view.state.value}")
    typer.echo(f"started {view.created_at.isoformat()} by {view.created_by}; sha256 {view.sha256}")
    for target in view.targets:
        typer.echo(_target_line(target))
    if view.state not in FINISHED:
        typer.echo(f"not finished: `curbwatch models rollout-resume {view.id}` carries it on")


def _verified_model(registry: Path, ref: str) -> tuple[RegistryEntry, bytes]:
    """A registered model's card and ONNX bytes, which must still have the recorded sha256.

    Raises:
        RegistryError: Unknown model, or its file is missing or changed.
    """
    from curbwatch.training.registry import Registry, RegistryError

    models = Registry(registry)
    entry = models.get(ref)
    problem = models.verify(entry.file)
    if problem:
        raise RegistryError(f"{entry.ref}: onnx {problem}")
    return entry, models.resolve(entry.file).read_bytes()


def _settings(database_url: str | None) -> ServerSettings:
    from curbwatch.server.settings import settings_from_options

    return settings_from_options(database_url=database_url)


def _target_line(target: TargetView) -> str:
    role = " (canary)" if target.canary else ""
    detail = f": {target.detail}" if target.detail else ""
    return f"  {target.device_id}{role}: {target.state.value}{detail}"
