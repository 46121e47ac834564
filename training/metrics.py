"""Box accuracy: a small COCO-style mAP and the YOLO dataset reader it is measured on.

It reproduces how Ultralytics computes mAP (greedy matching in score order at IoU 0.50:0.95,
101-point interpolated AP, classes without ground truth left out of the mean), so numbers measured
on ONNX models through the edge's detector line up with Ultralytics' ``val`` on PyTorch weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curbwatch.schema.yamlio import ConfigError, parse_yaml

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_AP_X = np.linspace(0.0, 1.0, 101)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class EvaluationError(Exception):
    """The evaluation cannot run as asked; the message says why."""


# ---- mAP ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boxes:
    """Boxes of one image in pixels; ``scores`` is None for ground truth."""

    xyxy: np.ndarray  # (N, 4) float
    class_ids: np.ndarray  # (N,) int
    scores: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Boxes:
        return cls(np.zeros((0, 4), np.float64), np.zeros(0, np.int64), np.zeros(0, np.float64))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU matrix of xyxy boxes."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_image(predicted: Boxes, truth: Boxes) -> np.ndarray:
    """(D, 10) bool: is each prediction (in descending score order) a true positive at each IoU threshold.

    Each prediction, best score first, takes the unclaimed ground-truth box of its class it overlaps
    most; one ground-truth box counts once per threshold.
    """
    assert predicted.scores is not None
    order = np.argsort(-predicted.scores, kind="stable")
    correct = np.zeros((len(order), len(IOU_THRESHOLDS)), bool)
    if len(truth.class_ids) == 0 or len(order) == 0:
        return correct
    iou = box_iou(truth.xyxy, predicted.xyxy[order])
    iou *= truth.class_ids[:, None] == predicted.class_ids[order][None, :]
    claimed = np.zeros((len(truth.class_ids), len(IOU_THRESHOLDS)), bool)
    for column in np.flatnonzero((iou >= IOU_THRESHOLDS[0]).any(axis=0)):
        available = np.where(claimed, 0.0, iou[:, column, None])
        best = available.argmax(axis=0)
        hit = available[best, np.arange(len(IOU_THRESHOLDS))] >= IOU_THRESHOLDS
        correct[column] = hit
        claimed[best, np.arange(len(IOU_THRESHOLDS))] |= hit
    return correct


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, sampled at 101 recall points (COCO)."""
    last = recall[-1] if len(recall) else 1.0
    mrec = np.concatenate(([0.0], recall, [last], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    return float(np.trapezoid(np.interp(_AP_X, mrec, mpre), _AP_X))


class ClassMetrics(BaseModel):
    """Average precision of one class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    images: int = Field(description="Images with at least one box of the class.")
    instances: int = Field(description="Ground-truth boxes of the class.")
    ap50: float
    ap50_95: float


@dataclass(frozen=True)
class MapResult:
    per_class: list[ClassMetrics]
    pr_curves: dict[str, tuple[np.ndarray, np.ndarray]]  # class -> (recall, precision) at IoU 0.5

    @property
    def map50(self) -> float:
        return float(np.mean([c.ap50 for c in self.per_class])) if self.per_class else 0.0

    @property
    def map50_95(self) -> float:
        return float(np.mean([c.ap50_95 for c in self.per_class])) if self.per_class else 0.0


def detection_map(
    predicted: Sequence[Boxes], truth: Sequence[Boxes], class_names: Sequence[str]
) -> MapResult:
    """mAP50 and mAP50-95 over images; classes without ground truth are left out of the means."""
    correct, scores, classes = [], [], []
    for pred, gt in zip(predicted, truth, strict=True):
        assert pred.scores is not None
        order = np.argsort(-pred.scores, kind="stable")
        correct.append(match_image(pred, gt))
        scores.append(pred.scores[order])
        classes.append(pred.class_ids[order])
    tp = np.concatenate(correct) if correct else np.zeros((0, len(IOU_THRESHOLDS)), bool)
    conf = np.concatenate(scores) if scores else np.zeros(0)
    pred_cls = np.concatenate(classes) if classes else np.zeros(0, np.int64)
    order = np.argsort(-conf, kind="stable")
    tp, pred_cls = tp[order], pred_cls[order]
    per_class, curves = [], {}
    for class_id, name in enumerate(class_names):
        instances = int(sum((gt.class_ids == class_id).sum() for gt in truth))
        if instances == 0:
            continue
        hits = tp[pred_cls == class_id]
        if len(hits) == 0:
            # No prediction of the class: AP 0 (the interpolation alone would give an empty curve 0.5).
            per_class.append(_class_metrics(name, class_id, truth, instances, [0.0] * len(IOU_THRESHOLDS)))
            curves[name] = (np.zeros(0), np.zeros(0))
            continue
        tpc = np.cumsum(hits, axis=0)
        fpc = np.cumsum(~hits, axis=0)
        recall = tpc / instances
        precision = tpc / np.maximum(tpc + fpc, 1)
        aps = [average_precision(recall[:, t], precision[:, t]) for t in range(len(IOU_THRESHOLDS))]
        per_class.append(_class_metrics(name, class_id, truth, instances, aps))
        curves[name] = (recall[:, 0], precision[:, 0])
    return MapResult(per_class, curves)


def _class_metrics(
    name: str, class_id: int, truth: Sequence[Boxes], instances: int, aps: Sequence[float]
) -> ClassMetrics:
    return ClassMetrics(
        name=name,
        images=sum(1 for gt in truth if (gt.class_ids == class_id).any()),
        instances=instances,
        ap50=float(aps[0]),
        ap50_95=float(np.mean(aps)),
    )


# ---- datasets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    truth: Boxes  # pixels


@dataclass(frozen=True)
class LabelledSplit:
    class_names: tuple[str, ...]
    images: list[LabelledImage]


def dataset_names(data_yaml: Path) -> tuple[tuple[str, ...], dict]:
    """Class names of a YOLO ``data.yaml`` and the parsed file."""
    try:
        tree = parse_yaml(data_yaml.read_text(encoding="utf-8"), str(data_yaml))
    except OSError as exc:
        raise EvaluationError(f"cannot read {data_yaml}: {exc.strerror}") from exc
    except ConfigError as exc:
        raise EvaluationError(str(exc)) from exc
    names = tree.get("names") if hasattr(tree, "get") else None
    if isinstance(names, dict):
        names = [names[key] for key in sorted(names)]
    if not isinstance(names, list) or not names:
        raise EvaluationError(f"{data_yaml}: 'names' must list the class names")
    return tuple(str(name) for name in names), tree


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def _read_labels(image: Path, size_wh: tuple[int, int], class_count: int) -> Boxes:
    path = _label_path(image)
    rows = []
    if path.is_file():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                class_id, cx, cy, w, h = (float(v) for v in line.split()[:5])
            except ValueError as exc:
                raise EvaluationError(f"{path}:{number}: expected 'class cx cy w h'") from exc
            if not 0 <= class_id < class_count:
                raise EvaluationError(f"{path}:{number}: class {int(class_id)} is not in the dataset's names")
            width, height = size_wh
            rows.append(
                (
                    class_id,
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                )
            )
    array = np.asarray(rows, np.float64).reshape(-1, 5)
    return Boxes(array[:, 1:], array[:, 0].astype(np.int64))


def load_split(data_yaml: Path, split: str = "val") -> LabelledSplit:
    """Images of one split of a YOLO dataset with their ground-truth boxes in pixels.

    Raises:
        EvaluationError: Unreadable yaml, missing split, unreadable image or malformed label.
    """
    import cv2

    names, tree = dataset_names(data_yaml)
    entry = tree.get(split)
    if not entry:
        raise EvaluationError(f"{data_yaml}: no '{split}' split")
    declared = tree.get("path")
    root = Path(declared) if declared else data_yaml.parent
    if declared and not root.is_absolute() and not root.exists():
        root = data_yaml.parent / root
    folders = [root / item for item in (entry if isinstance(entry, list) else [entry])]
    files = []
    for folder in folders:
        if not folder.is_dir():
            raise EvaluationError(f"{data_yaml}: split '{split}' folder {folder} does not exist")
        files += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EvaluationError(f"{data_yaml}: split '{split}' has no images")
    images = []
    for path in files:
        image = cv2.imread(str(path))
        if image is None:
            raise EvaluationError(f"{path}: not a readable image")
        images.append(LabelledImage(path, _read_labels(path, (image.shape[1], image.shape[0]), len(names))))
    return LabelledSplit(names, images)
