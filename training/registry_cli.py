"""``curbwatch models ...``: the model registry on the command line.

Wire it into the main command line with ``app.add_typer(models_app, name="models")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from curbwatch.training.registry import DEFAULT_REGISTRY

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
