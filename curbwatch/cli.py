"""The ``curbwatch`` command line.

Heavy modules (onnxruntime, OpenCV) are imported inside the commands that need them, so the
server and tooling commands work on machines without the edge extra.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from curbwatch.schema.yamlio import ConfigError
from curbwatch.server.cli import audit_app, devices_app, server_app, users_app
from curbwatch.training.cli import train_app
from curbwatch.training.registry_cli import models_app

app = typer.Typer(no_args_is_help=True, help="curbwatch: street-violation detection from city cameras.")
edge_app = typer.Typer(no_args_is_help=True, help="Run and check the edge runtime.")
zones_app = typer.Typer(no_args_is_help=True, help="Check and import zone files.")
schema_app = typer.Typer(no_args_is_help=True, help="JSON Schemas of the wire and config formats.")
app.add_typer(edge_app, name="edge")
app.add_typer(zones_app, name="zones")
app.add_typer(schema_app, name="schema")
app.add_typer(server_app, name="server")
app.add_typer(devices_app, name="devices")
app.add_typer(audit_app, name="audit")
app.add_typer(users_app, name="users")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO_ROOT / "docs" / "schemas"
REFERENCE_DIR = REPO_ROOT / "docs" / "config"


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=None, show_path=False, rich_tracebacks=True)],
    )


def _fail(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(1)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    _setup_logging(verbose)


@edge_app.command("run")
def edge_run(
    config: Annotated[Path | None, typer.Argument(help="edge.yaml; omit to use --source/--zones.")] = None,
    source: Annotated[
        str | None, typer.Option(help="Video file, rtsp:// URL, stills folder or webcam:N.")
    ] = None,
    zones: Annotated[Path | None, typer.Option(help="Zone file of the camera (with --source).")] = None,
    model: Annotated[
        Path | None, typer.Option(help="ONNX model (with --source); default: the demo model.")
    ] = None,
    events: Annotated[str | None, typer.Option(help="Events JSON-lines file; '-' for stdout.")] = None,
    record: Annotated[Path | None, typer.Option(help="Record detection logs to this folder.")] = None,
    evidence: Annotated[Path | None, typer.Option(help="Evidence folder (with --source).")] = None,
) -> None:
    """Run the edge on its cameras and print violation events as JSON lines.

    Examples:
        curbwatch edge run edge.yaml
        curbwatch edge run --source street.mp4 --zones zones/demo-street.yaml --events -
        curbwatch edge run --source rtsp://user:pw@10.0.0.5/stream1 --zones zones/cam-01.yaml --record logs/
    """
    from curbwatch.edge.app import build_config, run_edge
    from curbwatch.edge.detect.onnx import DetectorError

    try:
        edge_config = build_config(
            config, source=source, zones=zones, model=model, events=events, record=record, evidence=evidence
        )
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    try:
        reports = run_edge(edge_config)
    except DetectorError as exc:
        _fail(f"cannot start the detector: {exc}")
    failed = [report for report in reports.values() if report.error]
    for report in failed:
        typer.echo(f"camera {report.camera_id} failed: {report.error}", err=True)
    if failed and len(failed) == len(reports):
        raise typer.Exit(1)


@edge_app.command("check-config")
def edge_check_config(config: Annotated[Path, typer.Argument(help="edge.yaml to validate.")]) -> None:
    """Validate an edge config and every zone file it names; exit 0 when all are valid.

    Example:
        curbwatch edge check-config edge.yaml
    """
    from curbwatch.edge.config import load_edge_config
    from curbwatch.schema.zones import load_zone_file

    try:
        edge_config = load_edge_config(config)
        for camera in edge_config.cameras:
            load_zone_file(camera.zones)
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(f"{config}: ok ({len(edge_config.cameras)} cameras)")


@app.command("replay")
def replay_command(
    zones: Annotated[Path, typer.Argument(help="Zone file to judge the log against.")],
    detlog: Annotated[
        Path, typer.Argument(help="Detection log (curbwatch.detlog.v1 JSON lines); '-' for stdin.")
    ],
    config: Annotated[
        Path | None, typer.Option(help="edge.yaml whose tracker and rule settings to use.")
    ] = None,
    device_id: Annotated[str, typer.Option(help="Device id to put in events.")] = "replay",
) -> None:
    """Print the violation events a detection log produces, as JSON lines.

    Examples:
        curbwatch replay zones/cam-01.yaml logs/cam-01.jsonl
        curbwatch replay zones/cam-01.yaml logs/cam-01.jsonl --config edge.yaml | jq .event_code
    """
    from curbwatch.edge.app import replay_file

    try:
        for event in replay_file(zones, detlog, config, device_id):
            sys.stdout.write(event.to_json() + "\n")
    except (ConfigError, ValueError, OSError) as exc:
        _fail(str(exc))


@zones_app.command("check")
def zones_check(
    files: Annotated[list[Path], typer.Argument(help="Zone files to validate.")],
    model: Annotated[Path | None, typer.Option(help="Also check class names against this model.")] = None,
) -> None:
    """Validate zone files; errors name the file, line and column. Exit 0 when all are valid.

    Examples:
        curbwatch zones check zones/*.yaml
        curbwatch zones check zones/cam-01.yaml --model models/demo.onnx
    """
    from curbwatch.schema.zones import load_zone_file

    class_names = None
    if model is not None:
        from curbwatch.edge.detect.onnx import DetectorConfig, DetectorError, OnnxDetector

        try:
            class_names = OnnxDetector(DetectorConfig(model_path=model)).class_names
        except DetectorError as exc:
            _fail(str(exc))
    bad = 0
    for path in files:
        try:
            zone_file = load_zone_file(path, class_names=class_names)
            typer.echo(f"{path}: ok ({len(zone_file.zones)} zones)")
        except ConfigError as exc:
            bad += 1
            typer.echo(str(exc), err=True)
    if bad:
        raise typer.Exit(1)


@zones_app.command("import-pklot")
def zones_import_pklot(
    xml: Annotated[Path, typer.Argument(help="PKLot parking XML.")],
    camera: Annotated[str, typer.Option(help="Camera id for the zone file.")],
    timezone: Annotated[str, typer.Option(help="IANA time zone, e.g. Asia/Shanghai.")],
    width: Annotated[int, typer.Option(help="Frame width the XML coordinates refer to.")] = 1280,
    height: Annotated[int, typer.Option(help="Frame height the XML coordinates refer to.")] = 720,
    kind: Annotated[str, typer.Option(help="Zone kind for every bay.")] = "no_parking",
    min_dwell_s: Annotated[float | None, typer.Option(help="Dwell for every bay.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Turn PKLot parking-bay polygons into a zone file.

    Example:
        curbwatch zones import-pklot ufpr05.xml --camera ufpr05 --timezone America/Sao_Paulo \
            --out zones/ufpr05.yaml
    """
    from curbwatch.schema.pklot import PklotError, pklot_to_zone_file, zone_file_to_yaml

    try:
        zone_file = pklot_to_zone_file(
            xml,
            camera=camera,
            frame_wh=(width, height),
            timezone=timezone,
            kind=kind,
            min_dwell_s=min_dwell_s,
        )
    except (PklotError, ValueError) as exc:
        _fail(str(exc))
    text = zone_file_to_yaml(zone_file)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {len(zone_file.zones)} zones to {out}", err=True)


@schema_app.command("export")
def schema_export(
    check: Annotated[bool, typer.Option(help="Fail if the committed files are stale.")] = False,
    out_dir: Annotated[Path, typer.Option(help="Where to write the JSON Schemas.")] = SCHEMA_DIR,
    reference_dir: Annotated[
        Path, typer.Option(help="Where to write the Markdown configuration reference.")
    ] = REFERENCE_DIR,
) -> None:
    """Write the JSON Schemas to docs/schemas and the configuration reference pages to docs/config.

    Examples:
        curbwatch schema export
        curbwatch schema export --check
    """
    from curbwatch.schema.export import render_reference, render_schemas, stale_files, write_files

    outputs = ((out_dir, render_schemas()), (reference_dir, render_reference()))
    if not check:
        for directory, rendered in outputs:
            write_files(directory, rendered)
        return
    stale = [
        str(directory / name) for directory, rendered in outputs for name in stale_files(directory, rendered)
    ]
    if stale:
        _fail(f"stale files: {', '.join(stale)}; run `curbwatch schema export`")


@app.command("demo")
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where the database, rendered streets, events and evidence go.")
    ] = Path("build/demo"),
    port: Annotated[int, typer.Option(help="Port of the operator UI.")] = 8000,
    edge_only: Annotated[
        bool, typer.Option("--edge-only", help="Only the edge: print the events, start no server.")
    ] = False,
) -> None:
    """Run the whole system on this machine: two cameras on generated streets, the server and the UI.

    An embedded MQTT broker, the server (SQLite), its ingest worker and the web server start and
    the URL and the demo sign-ins are printed. Two generated streets (`curbwatch synth` seeds 1
    and 2) are rendered the first time (about a minute) and one edge box with two cameras watches
    them with the demo detector, paced like live cameras; its events become cases in the browser.
    Nothing is downloaded. Ctrl-C stops everything.

    Examples:
        curbwatch demo
        curbwatch demo --port 8080 --workdir /tmp/curbwatch-demo
        curbwatch demo --edge-only
    """
    from curbwatch.training.registry import RegistryError

    if edge_only:
        from datetime import UTC, datetime

        from curbwatch.edge.demo import run_demo

        try:
            run_demo(workdir, start_time=datetime.now(UTC).isoformat())
        except RegistryError as exc:
            _fail(str(exc))
        return
    from curbwatch.demo import run_stack_demo
    from curbwatch.stack import StackError

    try:
        run_stack_demo(workdir, http_port=port)
    except (StackError, RegistryError) as exc:
        _fail(str(exc))


@app.command("synth")
def synth(
    out: Annotated[
        Path, typer.Option(help="Output prefix: writes OUT.mp4, OUT.json, OUT.yaml and OUT.png.")
    ] = Path("build/synth/street"),
    seconds: Annotated[float, typer.Option(help="Scene length in seconds.", min=1.0)] = 120.0,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same scene.")] = 0,
    fps: Annotated[float, typer.Option(help="Frame rate.", min=0.5, max=60.0)] = 5.0,
    width: Annotated[int, typer.Option(help="Frame width in pixels.", min=16)] = 1280,
    height: Annotated[int, typer.Option(help="Frame height in pixels.", min=16)] = 720,
    start_time: Annotated[
        str, typer.Option(help="Wall time of the first frame, ISO 8601 with its UTC offset.")
    ] = "2026-11-25T09:00:00+08:00",
    lat: Annotated[
        float | None, typer.Option(help="Camera latitude for the zone file (with --lon).", min=-90, max=90)
    ] = None,
    lon: Annotated[
        float | None, typer.Option(help="Camera longitude for the zone file (with --lat).", min=-180, max=180)
    ] = None,
) -> None:
    """Render a street-scene video with exact ground truth and a matching zone file.

    Cars pass, stop briefly and park at the kerb, a scooter stands on the hatched pavement, a
    vendor sets up a stall, a bin overflows; light changes, shadows and camera noise included.
    OUT.json holds every box per frame and every violation episode; OUT.yaml is the zone file the
    edge can run on directly; OUT.png is one annotated frame.

    Examples:
        curbwatch synth --seconds 120 --seed 3 --out build/synth/street1
        curbwatch synth --seconds 20 --width 640 --height 360 --out build/synth/small
        curbwatch synth --seed 5 --lat 31.2304 --lon 121.4737 --out build/synth/placed
        curbwatch edge run --source build/synth/street1.mp4 --zones build/synth/street1.yaml --events -
    """
    from curbwatch.edge.synth.generate import synthesize

    if (lat is None) != (lon is None):
        _fail("give both --lat and --lon, or neither")
    location = (lat, lon) if lat is not None and lon is not None else None
    try:
        outputs = synthesize(
            out,
            seconds=seconds,
            seed=seed,
            fps=fps,
            frame_wh=(width, height),
            start_time=start_time,
            location=location,
        )
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(
        f"wrote {outputs.video}, {outputs.truth} ({outputs.episodes} violation episodes), "
        f"{outputs.zones}, {outputs.preview}"
    )


@app.command("broker")
def broker(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 1883,
) -> None:
    """Run the embedded MQTT broker (amqtt) for development; production uses Mosquitto or EMQX.

    Example:
        curbwatch broker --port 1884
    """
    import threading

    from curbwatch.broker import BrokerError, EmbeddedBroker

    try:
        running = EmbeddedBroker(host, port).start()
    except BrokerError as exc:
        _fail(str(exc))
    typer.echo(f"MQTT broker on {host}:{port}; Ctrl-C stops it", err=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        running.stop()


def main() -> None:
    app()
