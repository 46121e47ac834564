"""Trained weights -> an edge-ready ONNX model with its provenance in the metadata, INT8, a registry card.

The ONNX export is Ultralytics' own (``export(format="onnx", dynamic=True)``: a dynamic batch lets the
edge batch cameras); curbwatch then writes its provenance into the model's ``metadata_props``:

============== =================================================================================
key            value
============== =================================================================================
version        the model version (Ultralytics' own version moves to ``ultralytics_version``)
model_name     the registry name
family         ``ultralytics``
class_names    JSON list, in output order (Ultralytics' ``names`` stays, the edge reads that)
input_size_hw  JSON ``[h, w]`` (Ultralytics' ``imgsz`` stays, the edge reads that)
training_data  sha256 of the dataset card the weights learned from ("" when unknown)
parent_sha256  sha256 of the weights training started from ("" when trained from a yaml)
parent         the parent as name@version, weights path or yaml
description    one line with all of the above, shown as the edge card's ``source``
============== =================================================================================

so the edge detector loads it with no card file. :func:`publish` runs the whole step: export, check
the edge loads it from metadata alone, measure it through the edge detector, quantize to INT8,
measure the speed-up and accuracy change, and write the registry card.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from curbwatch.edge.detect.card import ModelCard, file_sha256
from curbwatch.training.evaluate import EvaluationError, check_zone_classes, evaluate_onnx
from curbwatch.training.metrics import dataset_names
from curbwatch.training.quantize import (
    CalibrationMethod,
    QuantizationError,
    calibration_set,
    compare_int8,
    copy_metadata,
    quantize_int8,
)
from curbwatch.training.registry import (
    Evaluation,
    ParentModel,
    Quantization,
    Registry,
    RegistryEntry,
    RegistryError,
    TrainingData,
    TrainingRun,
    parse_ref,
)
from curbwatch.training.train import import_ultralytics, load_summary

logger = logging.getLogger(__name__)

OPSET = 17
DEFAULT_MODELS_OUT = Path(__file__).resolve().parents[1] / "build" / "models"


class ExportError(Exception):
    """The model cannot be exported as asked; the message says why."""


@dataclass(frozen=True)
class Provenance:
    """What goes into the ONNX metadata besides Ultralytics' own keys."""

    name: str
    version: str
    dataset_sha256: str | None = None
    parent: str | None = None
    parent_sha256: str | None = None


def export_onnx(weights: Path, out: Path, provenance: Provenance, imgsz: int | None = None) -> Path:
    """Export ``weights`` to ``out`` (ONNX, dynamic batch, no NMS in the graph) with curbwatch metadata.

    Raises:
        ExportError: Missing weights or an export that failed.
    """
    if weights.suffix != ".pt":
        raise ExportError(f"{weights}: expected PyTorch weights (.pt) to export")
    if not weights.is_file():
        raise ExportError(f"{weights}: no such weights file")
    ultralytics = import_ultralytics()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Ultralytics writes the export beside its source file: work on a copy so nothing lands in the run.
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        source = Path(shutil.copy(weights, Path(scratch) / f"{out.stem}.pt"))
        model = ultralytics.YOLO(str(source))
        size = imgsz or int((model.ckpt or {}).get("train_args", {}).get("imgsz", 640))
        try:
            exported = model.export(format="onnx", imgsz=size, dynamic=True, simplify=False, opset=OPSET)
        except Exception as exc:  # Ultralytics raises whatever its exporters raise
            raise ExportError(f"Ultralytics could not export {weights} to ONNX: {exc}") from exc
        shutil.move(str(exported), out)
        names = [model.names[i] for i in range(len(model.names))]
    write_metadata(out, provenance, names, (size, size))
    return out


def write_metadata(model: Path, provenance: Provenance, names: list[str], size_hw: tuple[int, int]) -> None:
    """Add curbwatch's keys to the exported model's metadata (see the module docstring)."""
    import onnx

    current = {prop.key: prop.value for prop in onnx.load(str(model)).metadata_props}
    description = (
        f"curbwatch {provenance.name} {provenance.version}; trained on dataset card "
        f"{provenance.dataset_sha256 or 'unknown'} from {provenance.parent or 'unknown'}"
        + (f" (sha256 {provenance.parent_sha256})" if provenance.parent_sha256 else "")
    )
    extra = {
        "version": provenance.version,
        "ultralytics_version": current.get("version", ""),
        "model_name": provenance.name,
        "family": "ultralytics",
        "class_names": json.dumps(names),
        "input_size_hw": json.dumps(list(size_hw)),
        "training_data": provenance.dataset_sha256 or "",
        "parent": provenance.parent or "",
        "parent_sha256": provenance.parent_sha256 or "",
        "description": description,
    }
    copy_metadata(model, model, extra)


def check_edge_loads(model: Path, names: list[str], version: str) -> ModelCard:
    """Load ``model`` in the edge detector from its metadata alone, check what it read, return its card.

    Raises:
        ExportError: The edge refuses it or reads other classes or another version.
    """
    from curbwatch.edge.detect.onnx import DetectorConfig, DetectorError, OnnxDetector

    with tempfile.TemporaryDirectory() as no_cards:
        try:
            detector = OnnxDetector(DetectorConfig(model_path=model, models_dir=Path(no_cards)))
        except DetectorError as exc:
            raise ExportError(f"the edge detector cannot load {model}: {exc}") from exc
    card = detector.card
    if list(card.class_names) != names or card.version != version:
        raise ExportError(
            f"the edge reads {model} as version {card.version} with classes {list(card.class_names)}, "
            f"expected {version} with {names}"
        )
    return card


@dataclass(frozen=True)
class PublishRequest:
    """One model version to publish.

    Attributes:
        weights: Trained PyTorch weights (``<run>/weights/best.pt``).
        data: The dataset's ``data.yaml``: its validation split measures the model, its training split
            calibrates INT8, its card is the training-data reference.
        name: Registry name.
        version: Registry version (new).
        out_dir: Where the binaries go (``<out_dir>/<name>/<version>/``).
        parent: Parent as name@version; default: looked up from the run's summary.
        imgsz: Export size; default the training size.
        int8: Also quantize.
        calibration_images: Training images for INT8 calibration.
        calibration_method: onnxruntime calibration method.
        speed_runs: Timed runs per model and thread count.
        zones: Zone files whose classes the model must have.
        evaluation: ``report.json`` of ``curbwatch train eval`` to record the decision of.
    """

    weights: Path
    data: Path
    name: str
    version: str
    out_dir: Path = DEFAULT_MODELS_OUT
    parent: str | None = None
    imgsz: int | None = None
    int8: bool = True
    calibration_images: int = 32
    calibration_method: CalibrationMethod = "minmax"
    speed_runs: int = 50
    zones: tuple[Path, ...] = ()
    evaluation: Path | None = None


def _lineage(
    request: PublishRequest, registry: Registry
) -> tuple[ParentModel | None, TrainingData, TrainingRun | None]:
    from curbwatch.training.dataset_card import CARD_JSON

    summary = load_summary(request.weights)
    card = request.data.parent / CARD_JSON
    dataset = TrainingData(
        card=registry.relative(card) if card.is_file() else None,
        sha256=file_sha256(card) if card.is_file() else None,
        name=request.data.parent.name,
    )
    if request.parent is not None:
        entry = registry.get(request.parent)
        parent = ParentModel(
            ref=entry.ref, sha256=entry.weights.sha256 if entry.weights else entry.file.sha256
        )
    elif summary is not None:
        known = registry.find_sha256(summary.parent.sha256) if summary.parent.sha256 else None
        parent = ParentModel(ref=known.ref if known else summary.parent.ref, sha256=summary.parent.sha256)
    else:
        parent = None
    run = (
        TrainingRun(
            run_dir=registry.relative(summary.run_dir),
            epochs=summary.epochs,
            imgsz=summary.imgsz,
            seed=summary.seed,
            device=summary.device,
        )
        if summary is not None
        else None
    )
    return parent, dataset, run


def _evaluation(path: Path | None, weights: Path, registry: Registry) -> Evaluation | None:
    """The decision of an evaluation report, which must be about these weights."""
    if path is None:
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        measured = report["candidate"]["model_sha256"]
        promoted = bool(report["decision"]["promoted"])
        baseline = report.get("baseline")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path}: not a report.json of `curbwatch train eval`: {exc}") from exc
    if measured != file_sha256(weights):
        raise ExportError(f"{path} evaluated another model (sha256 {measured}), not {weights}")
    return Evaluation(
        report=registry.relative(path), promoted=promoted, baseline=baseline["model"] if baseline else None
    )


def _quantize(
    request: PublishRequest, onnx_path: Path, names: list[str], registry: Registry
) -> Quantization | None:
    if not request.int8:
        return None
    calibration = calibration_set(request.data, request.calibration_images)
    int8, excluded, method = quantize_int8(
        onnx_path,
        onnx_path.with_name(f"{request.name}.int8.onnx"),
        calibration,
        method=request.calibration_method,
    )
    check_edge_loads(int8, names, request.version)
    return compare_int8(
        onnx_path,
        int8,
        request.data,
        registry,
        calibration_images=len(calibration),
        excluded_nodes=excluded,
        method=method,
        runs=request.speed_runs,
    )


def publish(request: PublishRequest, registry: Registry, *, now: datetime) -> tuple[RegistryEntry, Path]:
    """Export, verify, measure, quantize and register one model version.

    Returns:
        The registry entry and the path of its card.

    Raises:
        ExportError: Any step refused (bad weights, zone classes the model lacks, a version that exists,
            an edge that cannot load the result, a failed quantization), with the reason.
    """
    if request.weights.suffix != ".pt" or not request.weights.is_file():
        raise ExportError(f"{request.weights}: expected an existing PyTorch weights file (.pt)")
    try:
        parse_ref(f"{request.name}@{request.version}")
    except RegistryError as exc:
        raise ExportError(str(exc)) from exc
    if registry.entry_path(request.name, request.version).exists():
        raise ExportError(f"{request.name}@{request.version} is already registered; choose a new --version")
    try:
        names = list(dataset_names(request.data)[0])
        if request.zones:
            check_zone_classes(request.zones, names, str(request.weights))
        parent, dataset, run = _lineage(request, registry)
    except (EvaluationError, RegistryError) as exc:
        raise ExportError(str(exc)) from exc
    evaluation = _evaluation(request.evaluation, request.weights, registry)
    folder = request.out_dir / request.name / request.version
    provenance = Provenance(
        request.name,
        request.version,
        dataset.sha256,
        parent.ref if parent else None,
        parent.sha256 if parent else None,
    )
    onnx_path = export_onnx(request.weights, folder / f"{request.name}.onnx", provenance, request.imgsz)
    card = check_edge_loads(onnx_path, names, request.version)
    try:
        metrics, _ = evaluate_onnx(onnx_path, request.data)
        quantization = _quantize(request, onnx_path, names, registry)
    except (EvaluationError, QuantizationError) as exc:
        raise ExportError(str(exc)) from exc
    weights_copy = Path(shutil.copy(request.weights, folder / f"{request.name}.pt"))
    entry = RegistryEntry(
        name=request.name,
        version=request.version,
        created_at=now.astimezone(UTC),
        family="ultralytics",
        input_size_hw=card.input_size_hw,
        class_names=names,
        strides=list(card.strides),
        file=registry.file_ref(onnx_path),
        weights=registry.file_ref(weights_copy),
        parent=parent,
        dataset=dataset,
        training=run,
        metrics=metrics,
        evaluation=evaluation,
        quantization=quantization,
        licence="AGPL-3.0 (Ultralytics)",
        source=f"curbwatch train export of {request.weights} (sha256 {file_sha256(request.weights)})",
    )
    try:
        card_path = registry.add(entry)
    except RegistryError as exc:
        raise ExportError(str(exc)) from exc
    return entry, card_path
