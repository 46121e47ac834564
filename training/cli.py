"""``curbwatch train ...``: from operator verdicts to an edge-ready model.

Wire it into the main command line with ``app.add_typer(train_app, name="train")``. Torch,
Ultralytics, OpenCV and onnxruntime are imported inside the commands, so ``curbwatch --help`` stays
light and machines without the train extra can still run everything else.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

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
from curbwatch.training.samples_cli import samples_app

train_app = typer.Typer(
    no_args_is_help=True,
    help="Retraining loop: dataset from verdicts, training, evaluation gate, ONNX/INT8 export.",
)

train_app.add_typer(samples_app, name="samples")

NOT_PROMOTED_EXIT = 2


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(1)


def _now() -> datetime:
    return datetime.now(UTC)


def _model_path(ref: str, registry: Path, want: str) -> Path:
    from curbwatch.training.registry import Registry, RegistryError, resolve_model_path

    try:
        return resolve_model_path(ref, Registry(registry), want=want)  # type: ignore[arg-type]
    except RegistryError as exc:
        _fail(str(exc))


@train_app.command("dataset")
def dataset_command(
    out: Annotated[Path, typer.Option(help="Dataset folder to create, e.g. build/datasets/street-2026-11.")],
    database_url: DatabaseUrlOption = None,
    evidence_dir: EvidenceDirOption = None,
    classes: ClassesOption = None,
    model: ClassesFromModelOption = None,
    registry: RegistryOption = DEFAULT_REGISTRY,
    val_fraction: Annotated[float, typer.Option(min=0.01, max=0.9, help="Target validation share.")] = 0.2,
    block_s: Annotated[
        float, typer.Option(min=1.0, help="Camera-time block length; a block stays on one side of the split.")
    ] = 3600.0,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    hash_name: Annotated[str, typer.Option("--hash", help="Perceptual hash: phash or dhash.")] = "phash",
    max_distance: Annotated[
        int, typer.Option(min=0, max=64, help="Hashes at most this many bits apart are near-duplicates.")
    ] = 4,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier dataset in --out.")] = False,
    labelled_samples: Annotated[
        Path | None,
        typer.Option(
            help="A `curbwatch train samples export` folder whose labels/ a person filled.",
            show_default=False,
        ),
    ] = None,
    zones: Annotated[
        list[Path] | None,
        typer.Option(
            "--zones",
            help="Zone files locating bin sites the server never published (repeatable).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export verified cases as a YOLO dataset with data.yaml and a dataset card.

    Confirmed cases become labels; cases rejected as false detections become hard negatives; cases
    rejected as not a violation, permitted or duplicate keep their boxes (the detector was right).
    With --labelled-samples, the sampled frames a person labelled join the dataset (same dedup and
    split; unlabelled ones are listed as skipped). Bin-site cases become crops of the site in
    bins/overflow (confirmed) and bins/clean (rejected as a false detection), the layout
    `curbwatch train bins --data OUT/bins` reads; the site's polygon comes from the zones the
    server published to the camera, else from --zones.

    Examples:
        curbwatch train dataset --out build/datasets/street --classes car,motorcycle,person
        curbwatch train dataset --database-url postgresql+psycopg://cw@db/cw --evidence-dir /srv/evidence \\
            --model curb-detector --out build/datasets/street-2026-11
        curbwatch train dataset --out build/datasets/street --model curb-detector \\
            --labelled-samples build/labelling/2026-11 --zones zones/market-st.yaml
    """
    from curbwatch.training.dataset import export_dataset
    from curbwatch.training.dataset_card import DatasetError, card_summary
    from curbwatch.training.registry import RegistryError
    from curbwatch.training.split import HASHES, SplitConfig

    if hash_name not in HASHES:
        _fail(f"--hash must be one of {', '.join(HASHES)}")
    settings = server_settings(database_url, evidence_dir)
    try:
        class_names = class_list(classes, model, registry)
        result = export_dataset(
            settings.database_url,
            settings.evidence_dir,
            out,
            now=_now(),
            class_names=class_names,
            split=SplitConfig(val_fraction=val_fraction, block_s=block_s, seed=seed),
            hash_name=hash_name,  # type: ignore[arg-type]
            duplicate_distance=max_distance,
            overwrite=overwrite,
            labelled_samples=labelled_samples,
            zone_files=zones or [],
        )
    except (DatasetError, RegistryError, ClassOptionError) as exc:
        _fail(str(exc))
    typer.echo(f"{result.data_yaml}\n{card_summary(result.card)}")


@train_app.command("synth-data")
def synth_data_command(
    out: Annotated[Path, typer.Option(help="Dataset folder to create, e.g. build/datasets/synth-street.")],
    train_scenes: Annotated[int, typer.Option(help="Training scenes (seeds from --first-seed on).")] = 24,
    val_scenes: Annotated[
        int, typer.Option(help="Validation scenes (the seeds after the training ones).")
    ] = 6,
    first_seed: Annotated[int, typer.Option(help="First seed; at least 100 (1 and 2 are the demo's).")] = 100,
    seconds: Annotated[float, typer.Option(help="Length of every scene.")] = 120.0,
    every_s: Annotated[float, typer.Option(help="Scene time between two sampled frames.")] = 2.0,
    width: Annotated[int, typer.Option(help="Frame width.")] = 960,
    height: Annotated[int, typer.Option(help="Frame height.")] = 540,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier dataset in --out.")] = False,
) -> None:
    """Render seeded synthetic street scenes into a YOLO dataset with data.yaml and a dataset card.

    Only the sampled frames are rendered; labels are the scenes' exact ground truth. Whole scenes go
    to train or to val; seeds below 100 are reserved for the demo's cameras and refused.

    Examples:
        curbwatch train synth-data --out build/datasets/synth-street
        curbwatch train synth-data --out build/datasets/synth-small --train-scenes 4 --val-scenes 1 \\
            --every-s 4 --first-seed 500 --overwrite
    """
    from pydantic import ValidationError

    from curbwatch.training.dataset_card import DatasetError, card_summary
    from curbwatch.training.synth_data import SynthDataConfig, build_synth_dataset

    try:
        config = SynthDataConfig(
            train_scenes=train_scenes,
            val_scenes=val_scenes,
            first_seed=first_seed,
            seconds=seconds,
            every_s=every_s,
            frame_wh=(width, height),
        )
    except ValidationError as exc:
        problems = (f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        _fail(f"invalid synth-data settings: {'; '.join(problems)}")
    try:
        result = build_synth_dataset(out, config, now=_now(), overwrite=overwrite, progress=_progress)
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"{result.data_yaml}\n{card_summary(result.card)}")


@train_app.command("run")
def run_command(
    data: Annotated[Path, typer.Option(help="The dataset's data.yaml.")],
    model: Annotated[
        str | None, typer.Option(help="Weights to fine-tune: a .pt or a registry NAME[@VERSION].")
    ] = None,
    from_yaml: Annotated[
        str | None, typer.Option(help="Train from scratch: yolov8n.yaml, yolo11n.yaml or a model yaml.")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    imgsz: Annotated[int, typer.Option(min=32, help="Training image size, a multiple of 32.")] = 320,
    batch: Annotated[int, typer.Option(min=1)] = 16,
    seed: Annotated[int, typer.Option(help="Seed for Python, numpy and torch.")] = 0,
    workers: Annotated[int, typer.Option(min=0, help="Data-loading processes.")] = 2,
    device: Annotated[
        str | None, typer.Option(help="cpu, 0 (first GPU), ...; default: a GPU when present.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name; default: the dataset folder's name.")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Where runs go; default build/runs.")] = None,
    registry: RegistryOption = DEFAULT_REGISTRY,
) -> None:
    """Fine-tune a detector, or train one from a yaml, with Ultralytics; a GPU is used when present.

    The run folder gets Ultralytics' results.csv/results.png, curves.png (losses and mAP per epoch)
    and train_summary.json (parent model, dataset card sha256, settings, weights sha256).

    Examples:
        curbwatch train run --data build/datasets/street/data.yaml --from-yaml yolov8n.yaml --epochs 50
        curbwatch train run --data build/datasets/street/data.yaml --model curb-detector@3 --imgsz 416
    """
    from pydantic import ValidationError

    from curbwatch.training.train import RUNS_DIR, TrainConfig, TrainingError, train

    weights = _model_path(model, registry, "weights") if model else None
    try:
        config = TrainConfig(
            data=data,
            model=weights,
            from_yaml=from_yaml,
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            seed=seed,
            workers=workers,
            device=device,
            name=name,
            runs_dir=runs_dir or RUNS_DIR,
        )
        summary = train(config, now=_now())
    except ValidationError as exc:
        _fail(f"invalid training settings: {exc}")
    except TrainingError as exc:
        _fail(str(exc))
    typer.echo(f"weights: {summary.weights}\nrun: {summary.run_dir}\nfinal: {summary.final}")


@train_app.command("eval")
def eval_command(
    model: Annotated[
        str, typer.Option(help="Candidate: a .pt, a .onnx or a registry NAME[@VERSION] (its ONNX).")
    ],
    data: Annotated[Path, typer.Option(help="data.yaml of the fixed evaluation set.")],
    baseline: Annotated[
        str | None, typer.Option(help="Current model, measured the same way (same kind of file).")
    ] = None,
    margin: Annotated[
        float, typer.Option(min=0.0, help="Promote unless mAP50 or mAP50-95 drops by more than this.")
    ] = 0.01,
    split: Annotated[str, typer.Option(help="Split of data.yaml to measure on.")] = "val",
    imgsz: Annotated[
        int | None, typer.Option(help="Image size for .pt models; default: training size.")
    ] = None,
    detlogs: Annotated[
        Path | None,
        typer.Option(help="Folder of detection logs (*.jsonl) with <stem>.truth.json beside them."),
    ] = None,
    zones: Annotated[
        Path | None,
        typer.Option(help="Folder of zone files (<log stem>.yaml); their classes must be the model's."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Report folder; default <run>/eval or build/evals/<model>.")
    ] = None,
    registry: RegistryOption = DEFAULT_REGISTRY,
) -> None:
    """Measure mAP per class, replay detection logs for violation precision/recall, and gate promotion.

    Exit code 0 when the candidate is promoted, 2 when it is not, 1 on bad inputs.

    Examples:
        curbwatch train eval --model build/runs/street/weights/best.pt --data build/datasets/street/data.yaml
        curbwatch train eval --model build/models/curb/4/curb.onnx --baseline curb-detector@3 \\
            --data build/datasets/holdout/data.yaml --detlogs logs/ --zones zones/ --margin 0.01
    """
    from curbwatch.training.evaluate import EvaluationError, run_evaluation

    if detlogs is not None and zones is None:
        _fail("--detlogs needs --zones (the zone file of each log)")
    candidate = _model_path(model, registry, "onnx")
    base = _model_path(baseline, registry, "onnx") if baseline else None
    if out is None:
        in_run = candidate.parent.name == "weights"
        out = candidate.parent.parent / "eval" if in_run else Path("build") / "evals" / candidate.stem
    try:
        report, markdown = run_evaluation(
            candidate,
            data,
            out,
            baseline=base,
            margin=margin,
            split=split,
            imgsz=imgsz,
            detlogs=detlogs,
            zones=zones,
        )
    except EvaluationError as exc:
        _fail(str(exc))
    c = report.candidate
    typer.echo(f"{c.method}: mAP50 {c.map50:.4f}, mAP50-95 {c.map50_95:.4f} on {c.images} images")
    if report.violations is not None:
        v = report.violations
        typer.echo(f"violations: precision {v.precision:.3f}, recall {v.recall:.3f}")
    typer.echo(
        f"{'promoted' if report.decision.promoted else 'NOT promoted'}: {'; '.join(report.decision.reasons)}"
    )
    typer.echo(f"report: {markdown}")
    if not report.decision.promoted:
        raise typer.Exit(NOT_PROMOTED_EXIT)


@train_app.command("export")
def export_command(
    weights: Annotated[str, typer.Option(help="Trained weights: a .pt or a registry NAME[@VERSION].")],
    data: Annotated[
        Path, typer.Option(help="data.yaml: val measures, train calibrates INT8, its card is recorded.")
    ],
    name: Annotated[str, typer.Option(help="Registry name of the model.")],
    version: Annotated[str, typer.Option(help="New registry version.")],
    parent: Annotated[
        str | None, typer.Option(help="Parent NAME@VERSION; default: looked up from the training run.")
    ] = None,
    imgsz: Annotated[int | None, typer.Option(help="Export size; default: the training size.")] = None,
    int8: Annotated[bool, typer.Option(help="Also quantize to INT8 and measure it.")] = True,
    calibration_images: Annotated[
        int, typer.Option(min=1, help="Training images for INT8 calibration.")
    ] = 32,
    calibration_method: Annotated[str, typer.Option(help="minmax, percentile or entropy.")] = "minmax",
    speed_runs: Annotated[
        int, typer.Option(min=1, help="Timed session.run calls per model and thread count.")
    ] = 50,
    zones: Annotated[
        list[Path] | None, typer.Option(help="Zone files whose classes the model must know (repeatable).")
    ] = None,
    eval_report: Annotated[
        Path | None, typer.Option("--eval", help="report.json of `curbwatch train eval` to record.")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Where binaries go; default build/models.")] = None,
    registry: RegistryOption = DEFAULT_REGISTRY,
) -> None:
    """Export to ONNX with provenance metadata, check the edge loads it, quantize to INT8, register it.

    Writes <out-dir>/<name>/<version>/<name>.onnx, <name>.int8.onnx and <name>.pt, and the registry
    card models/registry/<name>/<version>.yaml with mAP, INT8 speed-up and accuracy change.

    Examples:
        curbwatch train export --weights build/runs/street/weights/best.pt \\
            --data build/datasets/street/data.yaml --name curb-detector --version 4 --zones zones/cam-01.yaml
        curbwatch train export --weights curb-detector@3 --data build/datasets/street/data.yaml \\
            --name curb-detector --version 3b --no-int8 --eval build/runs/street/eval/report.json
    """
    from curbwatch.training.export import DEFAULT_MODELS_OUT, ExportError, PublishRequest, publish
    from curbwatch.training.quantize import quantization_lines
    from curbwatch.training.registry import Registry

    if calibration_method not in ("minmax", "percentile", "entropy"):
        _fail("--calibration-method must be minmax, percentile or entropy")
    request = PublishRequest(
        weights=_model_path(weights, registry, "weights"),
        data=data,
        name=name,
        version=version,
        out_dir=out_dir or DEFAULT_MODELS_OUT,
        parent=parent,
        imgsz=imgsz,
        int8=int8,
        calibration_images=calibration_images,
        calibration_method=calibration_method,  # type: ignore[arg-type]
        speed_runs=speed_runs,
        zones=tuple(zones or ()),
        evaluation=eval_report,
    )
    try:
        entry, card = publish(request, Registry(registry), now=_now())
    except ExportError as exc:
        _fail(str(exc))
    typer.echo(f"registered {entry.ref}: {card}")
    if entry.metrics is not None:
        typer.echo(f"mAP50 {entry.metrics.map50:.4f}, mAP50-95 {entry.metrics.map50_95:.4f} (edge-onnx)")
    if entry.quantization is not None:
        typer.echo("\n".join(quantization_lines(entry.quantization)))


@train_app.command("quantize")
def quantize_command(
    model: Annotated[Path, typer.Option(help="FP32 ONNX model.")],
    data: Annotated[Path, typer.Option(help="data.yaml: train calibrates, val measures.")],
    out: Annotated[
        Path | None, typer.Option(help="INT8 model; default <model stem>.int8.onnx beside it.")
    ] = None,
    calibration_images: Annotated[int, typer.Option(min=1)] = 32,
    calibration_method: Annotated[str, typer.Option(help="minmax, percentile or entropy.")] = "minmax",
    speed_runs: Annotated[int, typer.Option(min=1)] = 50,
) -> None:
    """Quantize an ONNX detector to INT8 and print its speed-up and mAP50 change (no registry card).

    Example:
        curbwatch train quantize --model build/models/curb/4/curb.onnx --data build/datasets/street/data.yaml
    """
    from curbwatch.training.evaluate import EvaluationError
    from curbwatch.training.quantize import (
        QuantizationError,
        calibration_set,
        compare_int8,
        quantization_lines,
        quantize_int8,
    )
    from curbwatch.training.registry import Registry

    if calibration_method not in ("minmax", "percentile", "entropy"):
        _fail("--calibration-method must be minmax, percentile or entropy")
    target = out or model.with_name(f"{model.stem}.int8.onnx")
    try:
        calibration = calibration_set(data, calibration_images)
        int8, excluded, method = quantize_int8(model, target, calibration, method=calibration_method)  # type: ignore[arg-type]
        report = compare_int8(
            model,
            int8,
            data,
            Registry(DEFAULT_REGISTRY),
            calibration_images=len(calibration),
            excluded_nodes=excluded,
            method=method,
            runs=speed_runs,
        )
    except (QuantizationError, EvaluationError) as exc:
        _fail(str(exc))
    typer.echo(f"{int8}: {method}")
    typer.echo("\n".join(quantization_lines(report)))


def _progress(items: Iterable[Any], description: str, total: int) -> Iterable[Any]:
    from tqdm import tqdm

    return tqdm(items, desc=description, total=total, unit="step", leave=False)


@train_app.command("bins")
def bins_command(
    data: Annotated[
        Path, typer.Option(help="Folder with clean/ and overflow/ photos of bin sites.", show_default=False)
    ],
    out: Annotated[Path, typer.Option(help="Classifier artefact (JSON) to write.")] = Path(
        "models/bin_state_v2.json"
    ),
    detector: Annotated[
        Path | None,
        typer.Option(
            help="ONNX detector whose features are used; default: the shared YOLOX-Nano "
            "($CURBWATCH_DATA/yolox-nano/yolox_nano.onnx).",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Markdown report; default: the artefact's path with .md.", show_default=False),
    ] = None,
    folds: Annotated[int, typer.Option(min=2, help="Outer folds of the repeated stratified k-fold.")] = 7,
    repeats: Annotated[int, typer.Option(min=1, help="Repetitions of the outer k-fold.")] = 10,
    loo_repeats: Annotated[
        int, typer.Option(min=1, help="Leave-one-out runs, each with other inner-loop shuffles.")
    ] = 3,
    seed: Annotated[int, typer.Option(help="Seed of every data split.")] = 0,
    version: Annotated[str, typer.Option(help="Version written into the artefact.")] = "1",
) -> None:
    """Train the bin-state classifier (overflowing or clean) and measure it by nested cross-validation.

    Writes the artefact the edge's `bin_classifier` estimator loads, a Markdown report with the
    accuracy of each approach, and a contact sheet (PNG beside the report) of the photos with
    their held-out predictions.

    Examples:
        curbwatch train bins --data ../shared/data/amsterdam-bins --out models/bin_state_v2.json --version 2
        curbwatch train bins --data photos/ --out build/bins.json --repeats 3 --detector yolox_nano.onnx
    """
    from curbwatch.edge.bins import BinEstimatorError
    from curbwatch.edge.detect.card import DetectorError
    from curbwatch.training.bin_classifier import (
        SHIPPED,
        BinTrainingError,
        default_detector_path,
        train_bin_classifier,
        write_artefact,
        write_report,
    )

    detector = detector or default_detector_path()
    report = report or out.with_suffix(".md")
    arguments = ["--data", str(data), "--out", str(out), "--version", version, "--folds", str(folds)]
    arguments += ["--repeats", str(repeats)]
    command = shlex.join(
        ["curbwatch", "train", "bins", *arguments, "--loo-repeats", str(loo_repeats), "--seed", str(seed)]
    )
    try:
        result = train_bin_classifier(
            data, detector, _now(), folds, repeats, loo_repeats, seed, progress=_progress, version=version
        )
    except (BinTrainingError, BinEstimatorError, DetectorError) as exc:
        _fail(str(exc))
    write_artefact(result.artefact, out)
    write_report(result, report, report.with_suffix(".png"), command)
    for name, approach in result.artefact.metrics["approaches"].items():
        kfold, loo = approach["kfold"], approach["loo"]
        typer.echo(
            f"{name:9s} accuracy {kfold['accuracy_mean']:.3f} ± {kfold['accuracy_std']:.3f} "
            f"({kfold['scheme']}), {loo['accuracy_mean']:.3f} ± {loo['accuracy_std']:.3f} ({loo['scheme']}); "
            f"balanced {kfold['balanced_accuracy_mean']:.3f}" + ("  <- shipped" if name == SHIPPED else "")
        )
    typer.echo(f"wrote {out}, {report} and {report.with_suffix('.png')}")
