"""``curbwatch train samples ...``: sampled frames out to a labelling tool (their labels come back
through ``curbwatch train dataset --labelled-samples``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from curbwatch.training.cli_options import (
    ClassesFromModelOption,
    ClassesOption,
    ClassOptionError,
    DatabaseUrlOption,
    EvidenceDirOption,
    class_list,
    server_settings,
)
from curbwatch.training.registry_cli import DEFAULT_REGISTRY, RegistryOption

samples_app = typer.Typer(no_args_is_help=True, help="Frames the edges sampled for labelling.")


@samples_app.command("export")
def export_command(
    out: Annotated[Path, typer.Argument(help="Folder to write, e.g. build/labelling/2026-11.")],
    database_url: DatabaseUrlOption = None,
    evidence_dir: EvidenceDirOption = None,
    classes: ClassesOption = None,
    model: ClassesFromModelOption = None,
    registry: RegistryOption = DEFAULT_REGISTRY,
    since: Annotated[
        datetime | None, typer.Option(help="Only samples of frames from this time on (UTC when no zone).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in OUT.")] = False,
) -> None:
    """Write the sampled frames with the edge's detections as YOLO pre-labels, for a labelling tool.

    OUT gets images/<sample_id>.jpg, prelabels/<sample_id>.txt (YOLO, the detector's boxes: a
    starting point), classes.txt, manifest.json (sample id, camera, frame time, model version,
    sha256) and an empty labels/. Load images/ with prelabels/ into the labelling tool, correct the
    boxes and save them as labels/<sample_id>.txt (an empty file: checked, nothing there); then
    `curbwatch train dataset --labelled-samples OUT` takes them. Samples without a saved label
    file are skipped and listed in the dataset card, never filled in from their pre-labels.

    Examples:
        curbwatch train samples export build/labelling/2026-11 --model curb-detector
        curbwatch train samples export build/labelling/week48 --classes car,person --since 2026-11-23
    """
    from curbwatch.training.registry import RegistryError
    from curbwatch.training.samples import SamplesError, export_samples

    settings = server_settings(database_url, evidence_dir)
    try:
        class_names = class_list(classes, model, registry)
        manifest = export_samples(
            settings.database_url,
            settings.evidence_dir,
            out,
            now=datetime.now(UTC),
            class_names=class_names,
            since=since.replace(tzinfo=since.tzinfo or UTC) if since else None,
            overwrite=overwrite,
        )
    except (SamplesError, RegistryError, ClassOptionError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{out}: {len(manifest.samples)} samples, {len(manifest.skipped)} skipped")
    for skipped in manifest.skipped:
        typer.echo(f"  skipped {skipped.sample_id}: {skipped.reason}")
