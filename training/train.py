"""Fine-tune an Ultralytics detector on a curbwatch dataset: CPU works, a GPU is used when present.

Ultralytics does the training (its progress bars show on the terminal, its ``results.csv`` and
``results.png`` land in the run folder); this module fixes the seeds, keeps Ultralytics offline and
its settings inside the repository's ``build/``, draws the training curves once more from
``results.csv`` (losses and mAP per epoch, ``curves.png``) and writes ``train_summary.json``: what was
trained from what, on which dataset card, with which settings, and where the weights are.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from curbwatch.edge.detect.card import file_sha256
from curbwatch.training.dataset_card import CARD_JSON

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO_ROOT / "build" / "runs"
SUMMARY_JSON = "train_summary.json"
TRAIN_SCHEMA = "curbwatch.train-run.v1"


class TrainingError(Exception):
    """Training cannot start or did not produce weights; the message says why."""


def import_ultralytics() -> ModuleType:
    """Import Ultralytics offline, without auto-installs, with its settings under ``build/ultralytics``.

    The variables must be set before the first import: Ultralytics reads them at import time.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO_ROOT / "build" / "ultralytics")))
    config_dir.mkdir(parents=True, exist_ok=True)
    try:
        import ultralytics
    except ImportError as exc:
        raise TrainingError(
            "ultralytics is not installed: install the train extra (pip install -e '.[train]')"
        ) from exc
    return ultralytics


def pick_device(requested: str | None) -> str:
    """``requested``, else the first CUDA GPU when torch sees one, else ``cpu``."""
    if requested:
        return requested
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


class ParentRef(BaseModel):
    """What training started from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["weights", "yaml"]
    ref: str = Field(description="Path of the weights, or the architecture yaml.")
    sha256: str | None = Field(default=None, description="sha256 of the weights file.")


class DatasetRef(BaseModel):
    """Which dataset a model learned from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_yaml: str
    card: str | None = Field(default=None, description="Path of dataset_card.json.")
    card_sha256: str | None = Field(default=None, description="sha256 of dataset_card.json.")
    name: str | None = None


class TrainSummary(BaseModel):
    """``train_summary.json`` of a run."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["curbwatch.train-run.v1"] = Field(default=TRAIN_SCHEMA, alias="schema")
    name: str
    started_at: datetime
    wall_s: float
    run_dir: str
    parent: ParentRef
    dataset: DatasetRef
    class_names: list[str]
    epochs: int
    imgsz: int
    batch: int
    seed: int
    device: str
    versions: dict[str, str]
    weights: str
    weights_sha256: str
    final: dict[str, float] = Field(description="Last epoch's validation metrics from results.csv.")
    curves: list[str]


class TrainConfig(BaseModel):
    """One training run.

    Attributes:
        data: The dataset's ``data.yaml``.
        model: PyTorch weights to fine-tune (a ``.pt``); or
        from_yaml: an architecture to train from scratch (``yolov8n.yaml``, ``yolo11n.yaml`` or a path).
        epochs: Passes over the training images.
        imgsz: Training image size (multiple of 32).
        batch: Images per step.
        seed: Seeds Python, numpy and torch; Ultralytics runs deterministic algorithms.
        workers: Data-loading processes (0 loads in the training process).
        device: ``cpu``, ``0`` (first GPU) ...; None picks a GPU when there is one.
        runs_dir: Where run folders go.
        name: Run folder name; default: the dataset's folder name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path
    model: Path | None = None
    from_yaml: str | None = None
    epochs: int = Field(default=30, ge=1)
    imgsz: int = Field(default=320, ge=32, multiple_of=32)
    batch: int = Field(default=16, ge=1)
    seed: int = 0
    workers: int = Field(default=2, ge=0)
    device: str | None = None
    runs_dir: Path = RUNS_DIR
    name: str | None = None


def _dataset_ref(data: Path) -> DatasetRef:
    card = data.parent / CARD_JSON
    if not card.is_file():
        logger.warning("%s has no %s beside it: the model will not record its training data", data, CARD_JSON)
        return DatasetRef(data_yaml=str(data))
    return DatasetRef(
        data_yaml=str(data), card=str(card), card_sha256=file_sha256(card), name=data.parent.name
    )


def _parent(config: TrainConfig) -> ParentRef:
    if (config.model is None) == (config.from_yaml is None):
        raise TrainingError(
            "give exactly one of --model (weights to fine-tune) and --from-yaml (architecture)"
        )
    if config.model is not None:
        if config.model.suffix != ".pt":
            raise TrainingError(
                f"{config.model}: fine-tuning needs PyTorch weights (.pt); an ONNX export cannot be trained. "
                "The model's registry card names its weights file"
            )
        if not config.model.is_file():
            raise TrainingError(f"{config.model}: no such weights file")
        return ParentRef(kind="weights", ref=str(config.model), sha256=file_sha256(config.model))
    return ParentRef(kind="yaml", ref=str(config.from_yaml))


def read_results(results_csv: Path) -> list[dict[str, float]]:
    """Rows of Ultralytics' ``results.csv`` with stripped keys and float values."""
    with results_csv.open(encoding="utf-8") as handle:
        return [{key.strip(): float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def plot_curves(rows: list[dict[str, float]], out: Path) -> Path:
    """Losses (train and val) and validation metrics per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    fig, (losses, metrics) = plt.subplots(1, 2, figsize=(11, 4))
    for colour, key in enumerate(("box_loss", "cls_loss", "dfl_loss")):
        for split, style in (("train", "-"), ("val", "--")):
            if f"{split}/{key}" in rows[0]:
                values = [row[f"{split}/{key}"] for row in rows]
                losses.plot(epochs, values, style, color=f"C{colour}", marker=".", label=f"{split} {key}")
    losses.set_xlabel("epoch")
    losses.set_title("losses")
    losses.legend(fontsize=7)
    for key, label in (
        ("metrics/precision(B)", "precision"),
        ("metrics/recall(B)", "recall"),
        ("metrics/mAP50(B)", "mAP50"),
        ("metrics/mAP50-95(B)", "mAP50-95"),
    ):
        if key in rows[0]:
            metrics.plot(epochs, [row[key] for row in rows], marker=".", label=label)
    metrics.set_xlabel("epoch")
    metrics.set_ylim(0, 1)
    metrics.set_title("validation")
    metrics.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _final_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    names = {
        "metrics/precision(B)": "precision",
        "metrics/recall(B)": "recall",
        "metrics/mAP50(B)": "map50",
        "metrics/mAP50-95(B)": "map50_95",
    }
    return {short: rows[-1][key] for key, short in names.items() if rows and key in rows[-1]}


def train(config: TrainConfig, *, now: datetime) -> TrainSummary:
    """Train, draw the curves and write ``train_summary.json`` into the run folder.

    Args:
        config: What to train on and how.
        now: Start time for the summary.

    Raises:
        TrainingError: Bad inputs (both or neither of model/yaml, an ONNX to fine-tune, a missing
            dataset) or a run that produced no weights.
    """
    parent = _parent(config)
    if not config.data.is_file():
        raise TrainingError(f"{config.data}: no such data.yaml; build one with `curbwatch train dataset`")
    dataset = _dataset_ref(config.data)
    ultralytics = import_ultralytics()
    import torch

    device = pick_device(config.device)
    name = config.name or config.data.parent.name
    yolo = ultralytics.YOLO(parent.ref)
    started = time.perf_counter()
    yolo.train(
        data=str(config.data),
        epochs=config.epochs,
        imgsz=config.imgsz,
        batch=config.batch,
        workers=config.workers,
        device=device,
        seed=config.seed,
        deterministic=True,
        project=str(config.runs_dir.resolve()),
        name=name,
        exist_ok=True,
        plots=True,
        verbose=True,
    )
    wall_s = time.perf_counter() - started
    run_dir = Path(yolo.trainer.save_dir)
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        raise TrainingError(f"training finished without {best}; see the Ultralytics output above")
    rows = read_results(run_dir / "results.csv")
    curves = [plot_curves(rows, run_dir / "curves.png")]
    if (run_dir / "results.png").is_file():
        curves.append(run_dir / "results.png")
    summary = TrainSummary(
        name=name,
        started_at=now.astimezone(UTC),
        wall_s=round(wall_s, 2),
        run_dir=str(run_dir),
        parent=parent,
        dataset=dataset,
        class_names=[yolo.trainer.data["names"][i] for i in range(len(yolo.trainer.data["names"]))],
        epochs=config.epochs,
        imgsz=config.imgsz,
        batch=config.batch,
        seed=config.seed,
        device=device,
        versions={"ultralytics": ultralytics.__version__, "torch": torch.__version__},
        weights=str(best),
        weights_sha256=file_sha256(best),
        final=_final_metrics(rows),
        curves=[str(path) for path in curves],
    )
    (run_dir / SUMMARY_JSON).write_text(
        summary.model_dump_json(by_alias=True, indent=1) + "\n", encoding="utf-8"
    )
    logger.info("run %s: weights %s (%.0f s)", run_dir, best, wall_s)
    return summary


def load_summary(weights: Path) -> TrainSummary | None:
    """The summary of the run that produced ``weights`` (``<run>/weights/best.pt``), if there is one."""
    path = weights.parent.parent / SUMMARY_JSON
    if not path.is_file():
        return None
    return TrainSummary.model_validate_json(path.read_bytes())
