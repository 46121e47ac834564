"""Bin-state classifier: photos of bin sites -> ``models/bin_state_v2.json`` for the edge.

There are few labelled photos (22 real ones in ``amsterdam-bins``), far too few to train a
network. So the classifier reuses what the edge already runs: the shared YOLOX detector's neck
feature maps (exposed as extra graph outputs, see ``curbwatch.edge.bin_classifier.add_graph_outputs``),
pooled over the site (mean and standard deviation per channel), plus colour and edge statistics.
Each block gets its own standardisation and L2-regularised logistic regression; the shipped score
is the sum of the two blocks' logits, each the mean over the block's whole grid of regularisation
strengths ``C`` (no ``C`` is chosen, so 22 photos need not pick one). Means and sums of linear
models are again one linear model over the concatenated features, so the edge needs numpy and
onnxruntime only.

Features come from the edge's own ``BinFeatureExtractor`` so training and the edge compute the
very same numbers. Each photo gives two views (as is and mirrored): both train, and a photo's
score is the mean logit of its views (as on the edge).

Accuracy is measured by nested cross-validation: the outer loop (repeated stratified k-fold, and
leave-one-out) holds photos out; for the approaches that choose a ``C`` per block, the inner loop
picks it on the outer training photos only. So every reported number is on photos that neither
the weights nor any choice saw.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, log_loss
from sklearn.model_selection import LeaveOneOut, RepeatedStratifiedKFold, StratifiedKFold

from curbwatch.edge.bin_classifier import (
    BIN_STATE_FORMAT,
    CLASS_NAMES,
    COLOUR_FEATURES,
    BinFeatureExtractor,
    BinStateArtefact,
    DetectorReference,
    FeatureLayer,
    FeatureSpec,
    LinearHead,
)
from curbwatch.edge.detect.card import file_sha256

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# YOLOX-Nano (Megvii COCO export) PAFPN outputs: richer than the backbone stages in the measurements
# of models/bin_state_v2.md, and coarse enough to pool cheaply.
YOLOX_NANO_LAYERS = (
    FeatureLayer(tensor="990", name="PAFPN pan_out1 (C3_n3), stride 16", channels=128, stride=16),
    FeatureLayer(tensor="1024", name="PAFPN pan_out0 (C3_n4), stride 32", channels=256, stride=32),
)
# Regularisation grids per block (smaller C: stronger regularisation): the inner loop chooses from
# them, or the averaging approach takes the mean of the whole grid.
C_GRID: dict[str, tuple[float, ...]] = {"deep": (0.003, 0.03, 0.3), "colour": (0.1, 1.0, 10.0)}
THRESHOLD = 0.5  # class-balanced training puts the even odds at the class boundary
TARGET_ACCURACY = 0.85  # issue 5: accuracy on real photos the classifier has not seen
FOLDER_LABELS = {"clean": 0, "overflow": 1}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]


def no_progress(items: Iterable[Any], _description: str, _total: int) -> Iterable[Any]:
    return items


class BinTrainingError(ValueError):
    """The photos or settings cannot train a classifier (missing folders, too few photos, bad files)."""


def default_detector_path() -> Path:
    """The shared YOLOX-Nano: ``$CURBWATCH_DATA`` or ``../shared/data`` beside the repository."""
    data = Path(os.environ.get("CURBWATCH_DATA", REPO_ROOT.parent / "shared" / "data"))
    return data / "yolox-nano" / "yolox_nano.onnx"


@dataclass(frozen=True)
class Photo:
    """One labelled photo: ``clean/`` is 0, ``overflow/`` is 1."""

    path: Path
    label: int
    sha256: str

    @property
    def relative(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def load_photos(root: Path) -> list[Photo]:
    """The photos under ``root/clean`` and ``root/overflow``, sorted by folder and name.

    Raises:
        BinTrainingError: No such folder, a class folder missing, or fewer than 2 photos in a class.
    """
    if not root.is_dir():
        raise BinTrainingError(f"photo folder {root}: no such directory")
    photos: list[Photo] = []
    for folder, label in FOLDER_LABELS.items():
        directory = root / folder
        files = sorted(p for p in directory.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 2:
            raise BinTrainingError(
                f"{directory}: need at least 2 photos per class for cross-validation, found {len(files)} "
                f"(expected layout: {root}/clean/*.jpg and {root}/overflow/*.jpg)"
            )
        photos += [Photo(path, label, hashlib.sha256(path.read_bytes()).hexdigest()) for path in files]
    return photos


def read_photo(photo: Photo) -> np.ndarray:
    """The photo as BGR uint8 (EXIF orientation applied by OpenCV)."""
    image = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
    if image is None:
        raise BinTrainingError(f"{photo.path}: not an image OpenCV can read (corrupt or unsupported)")
    return image


def extract_features(
    photos: list[Photo], extractor: BinFeatureExtractor, progress: Progress = no_progress
) -> np.ndarray:
    """float64 (photos, views, size): each whole photo is the site, every pixel visible."""
    rows = []
    for photo in progress(photos, "features", len(photos)):
        image = read_photo(photo)
        rows.append(extractor.features(image, np.ones(image.shape[:2], bool)))
    return np.stack(rows)


@dataclass(frozen=True)
class Approach:
    """A classifier made of one or more feature blocks whose logits add up.

    Attributes:
        average_c: Each block's logit is the mean over its whole C grid, so nothing is chosen;
            otherwise the inner loop chooses one C per block.
    """

    name: str
    blocks: tuple[str, ...]
    description: str
    average_c: bool = False


APPROACHES = (
    Approach("colour", ("colour",), "colour and edge statistics only (model-free baseline), C chosen"),
    Approach("deep", ("deep",), "YOLOX-Nano PAFPN features only, C chosen"),
    Approach(
        "fused", ("deep", "colour"), "sum of the deep and colour logits, C chosen per block (v1 recipe)"
    ),
    Approach(
        "grid-mean",
        ("deep", "colour"),
        "sum of the deep and colour logits, each the mean over its C grid (shipped)",
        average_c=True,
    ),
)
SHIPPED = "grid-mean"
# One candidate of an approach: the C values each block's logit is averaged over (one, unless average_c).
Choice = dict[str, tuple[float, ...]]


@dataclass(frozen=True)
class BlockFit:
    """Standardisation and logistic regression of one feature block."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Mean logit over the views of each photo: (photos, views, block) -> (photos,)."""
        return (((features - self.mean) / self.std) @ self.weights + self.bias).mean(axis=1)


def fit_block(features: np.ndarray, labels: np.ndarray, c: float) -> BlockFit:
    """Fit one block on (photos, views, block) features; every view is a training sample."""
    samples = features.reshape(-1, features.shape[2])
    targets = np.repeat(labels, features.shape[1])
    mean = samples.mean(axis=0)
    std = samples.std(axis=0)
    std[std < 1e-9] = 1.0  # constant features carry nothing; keep them harmless
    # liblinear is some 30x faster than lbfgs here (few samples, many features); the large intercept
    # scaling all but lifts its penalty on the bias.
    model = LogisticRegression(C=c, class_weight="balanced", solver="liblinear", intercept_scaling=10.0)
    model.fit((samples - mean) / std, targets)
    return BlockFit(mean, std, model.coef_[0].astype(np.float64), float(model.intercept_[0]))


def fit_averaged_block(features: np.ndarray, labels: np.ndarray, cs: tuple[float, ...]) -> BlockFit:
    """The mean of the block's fits at each C: one linear model whose logit is the mean of theirs
    (the standardisation depends on the data only, so it is shared)."""
    fits = [fit_block(features, labels, c) for c in cs]
    weights = np.mean([fit.weights for fit in fits], axis=0)
    return BlockFit(fits[0].mean, fits[0].std, weights, float(np.mean([fit.bias for fit in fits])))


@dataclass
class FeatureSet:
    """The photos' features split into the blocks the approaches combine."""

    values: np.ndarray
    labels: np.ndarray
    slices: dict[str, slice]

    def block(self, name: str, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self.values[rows][:, :, self.slices[name]]


def feature_set(values: np.ndarray, labels: np.ndarray, spec: FeatureSpec) -> FeatureSet:
    deep = spec.size - (COLOUR_FEATURES if spec.colour else 0)
    slices = {"deep": slice(0, deep)}
    if spec.colour:
        slices["colour"] = slice(deep, spec.size)
    return FeatureSet(values, labels, slices)


def _fold_logits(
    features: FeatureSet, train: np.ndarray, test: np.ndarray, blocks: Iterable[str]
) -> dict[tuple[str, float], np.ndarray]:
    """Logits on ``test`` of every block at every C of its grid, fitted on ``train``."""
    return {
        (block, c): fit_block(features.block(block, train), features.labels[train], c).logits(
            features.block(block, test)
        )
        for block in blocks
        for c in C_GRID[block]
    }


def _choices(approach: Approach) -> Iterator[Choice]:
    """The candidates the inner loop picks from; an averaging approach has only one."""
    if approach.average_c:
        yield {block: C_GRID[block] for block in approach.blocks}
        return
    for values in itertools.product(*(C_GRID[block] for block in approach.blocks)):
        yield {block: (c,) for block, c in zip(approach.blocks, values, strict=True)}


def _combined(logits: dict[tuple[str, float], np.ndarray], choice: Choice) -> np.ndarray:
    """Sum over the blocks of each block's mean logit over its C values."""
    return np.sum([np.mean([logits[(block, c)] for c in cs], axis=0) for block, cs in choice.items()], axis=0)


def out_of_fold_logits(
    features: FeatureSet, rows: np.ndarray, blocks: Iterable[str], splits: int, seed: int
) -> dict[tuple[str, float], np.ndarray]:
    """Held-out logits of every block and C on ``rows``, by stratified k-fold within ``rows`` only."""
    labels = features.labels[rows]
    splits = min(splits, int(np.bincount(labels).min()))
    held_out: dict[tuple[str, float], np.ndarray] = {}
    for train, test in StratifiedKFold(splits, shuffle=True, random_state=seed).split(rows, labels):
        for key, values in _fold_logits(features, rows[train], rows[test], blocks).items():
            held_out.setdefault(key, np.zeros(len(rows)))[test] = values
    return held_out


def best_choice(
    held_out: dict[tuple[str, float], np.ndarray], labels: np.ndarray, approach: Approach
) -> Choice:
    """The C per block whose held-out logits score best: balanced accuracy, then log-loss."""

    def merit(choice: Choice) -> tuple[float, float]:
        logit = _combined(held_out, choice)
        probability = np.clip(_sigmoid(logit), 1e-6, 1 - 1e-6)
        return balanced_accuracy_score(labels, logit >= 0), -log_loss(labels, probability, labels=[0, 1])

    return max(_choices(approach), key=merit)


@dataclass
class CvResult:
    """Nested cross-validation of one approach under one outer scheme.

    Attributes:
        approach: Approach name.
        scheme: Outer scheme, e.g. "7-fold x10" or "leave-one-out x3".
        accuracy: Accuracy over all photos, one value per repeat.
        balanced_accuracy: Mean of the per-class recalls, one value per repeat.
        confusion: 2x2 counts summed over repeats (rows: true clean, overflow; columns: predicted).
        probability: Per photo, its mean held-out probability over repeats.
        chosen_c: How often each C choice won the inner loop (an averaging approach has one).
        fixed_c_accuracy: Mean accuracy had each C choice been fixed in advance (no inner loop);
            the best of these is an optimistic number, chosen after seeing the photos.
    """

    approach: str
    scheme: str
    accuracy: list[float] = field(default_factory=list)
    balanced_accuracy: list[float] = field(default_factory=list)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    probability: np.ndarray = field(default_factory=lambda: np.zeros(0))
    chosen_c: dict[str, int] = field(default_factory=dict)
    fixed_c_accuracy: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        acc, bal = np.asarray(self.accuracy), np.asarray(self.balanced_accuracy)
        return {
            "scheme": self.scheme,
            "accuracy_mean": round(float(acc.mean()), 4),
            "accuracy_std": round(float(acc.std()), 4),
            "accuracy_min": round(float(acc.min()), 4),
            "accuracy_max": round(float(acc.max()), 4),
            "balanced_accuracy_mean": round(float(bal.mean()), 4),
            "balanced_accuracy_std": round(float(bal.std()), 4),
            "confusion": self.confusion.tolist(),
            "chosen_c": self.chosen_c,
            "fixed_c_accuracy": self.fixed_c_accuracy,
        }


def _describe(choice: Choice) -> str:
    return ", ".join(
        f"{block} C={cs[0]:g}" if len(cs) == 1 else f"{block} C=mean of {'/'.join(f'{c:g}' for c in cs)}"
        for block, cs in choice.items()
    )


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit))


def nested_cv(
    features: FeatureSet,
    splits: list[tuple[np.ndarray, np.ndarray]],
    repeats: int,
    scheme: str,
    inner_splits: int = 6,
    seed: int = 0,
    progress: Progress = no_progress,
) -> dict[str, CvResult]:
    """Every approach under the same outer splits (``repeats`` consecutive partitions of the photos)."""
    labels = features.labels
    shape = (repeats, len(labels))
    held_out = {a.name: np.full(shape, np.nan) for a in APPROACHES}
    fixed = {(a.name, _describe(c)): np.full(shape, np.nan) for a in APPROACHES for c in _choices(a)}
    results = {a.name: CvResult(a.name, scheme) for a in APPROACHES}
    folds_per_repeat = len(splits) // repeats
    blocks = sorted({block for a in APPROACHES for block in a.blocks})
    for index, (train, test) in enumerate(progress(splits, f"cross-validation ({scheme})", len(splits))):
        repeat = index // folds_per_repeat
        logits = _fold_logits(features, train, test, blocks)
        inner = out_of_fold_logits(features, train, blocks, inner_splits, seed + index)
        for approach in APPROACHES:
            for choice in _choices(approach):
                fixed[(approach.name, _describe(choice))][repeat, test] = _sigmoid(_combined(logits, choice))
            choice = best_choice(inner, labels[train], approach)
            key = _describe(choice)
            results[approach.name].chosen_c[key] = results[approach.name].chosen_c.get(key, 0) + 1
            held_out[approach.name][repeat, test] = _sigmoid(_combined(logits, choice))
    for (name, key), probabilities in fixed.items():
        accuracy = ((probabilities >= THRESHOLD) == labels).mean(axis=1)
        results[name].fixed_c_accuracy[key] = round(float(accuracy.mean()), 4)
    for name, probabilities in held_out.items():
        result = results[name]
        for row in probabilities:
            predicted = (row >= THRESHOLD).astype(int)
            result.accuracy.append(float((predicted == labels).mean()))
            result.balanced_accuracy.append(float(balanced_accuracy_score(labels, predicted)))
            result.confusion += confusion_matrix(labels, predicted, labels=[0, 1])
        result.probability = probabilities.mean(axis=0)
    return results


def repeated_kfold_splits(labels: np.ndarray, folds: int, repeats: int, seed: int) -> list:
    """Stratified ``folds``-fold partitions, ``repeats`` times with different shuffles."""
    folds = min(folds, int(np.bincount(labels).min()))
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def fit_head(features: FeatureSet, choice: Choice) -> LinearHead:
    """One linear head over all features: the chosen blocks' fits (each averaged over its C values)
    side by side (others zero), biases added."""
    rows = np.arange(len(features.labels))
    fits = {
        block: fit_averaged_block(features.block(block, rows), features.labels, cs)
        for block, cs in choice.items()
    }
    mean, std, weights = [], [], []
    for block in features.slices:
        if block in fits:
            fit = fits[block]
            mean.append(fit.mean)
            std.append(fit.std)
            weights.append(fit.weights)
        else:  # a block the approach ignores keeps its place with zero weight
            width = features.slices[block].stop - features.slices[block].start
            mean.append(np.zeros(width))
            std.append(np.ones(width))
            weights.append(np.zeros(width))
    return LinearHead(
        mean=tuple(np.concatenate(mean).tolist()),
        std=tuple(np.concatenate(std).tolist()),
        weights=tuple(np.concatenate(weights).tolist()),
        bias=sum(fit.bias for fit in fits.values()),
        threshold=THRESHOLD,
    )


@dataclass
class TrainingResult:
    """What ``train_bin_classifier`` produced: the artefact, its measurements and the photos."""

    artefact: BinStateArtefact
    photos: list[Photo]
    kfold: dict[str, CvResult]
    loo: dict[str, CvResult]
    folds: int
    repeats: int


def _source_fields(root: Path) -> dict[str, str]:
    """``Origin`` and ``Licence`` of the folder's SOURCE.txt (``Key : value`` lines, indented
    continuation lines), if it has one."""
    source = root / "SOURCE.txt"
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    lines = source.read_text(encoding="utf-8").splitlines() if source.is_file() else []
    for line in lines:
        key, colon, value = line.partition(":")
        if line[:1].strip() and colon:
            current = (
                fields.setdefault(key.strip().lower(), []) if key.strip() in ("Origin", "Licence") else None
            )
            if current is not None:
                current.append(value.strip())
        elif current is not None and line.strip():
            current.append(line.strip())
    return {key: " ".join(parts) for key, parts in fields.items()}


def _data_provenance(root: Path, photos: list[Photo]) -> dict[str, Any]:
    return {
        "folder": root.name,
        **_source_fields(root),
        "counts": {name: sum(p.label == label for p in photos) for name, label in FOLDER_LABELS.items()},
        "photos": [{"file": p.relative, "label": CLASS_NAMES[p.label], "sha256": p.sha256} for p in photos],
    }


def train_bin_classifier(
    data_dir: Path,
    detector: Path,
    now: datetime,
    folds: int = 7,
    repeats: int = 10,
    loo_repeats: int = 3,
    seed: int = 0,
    progress: Progress = no_progress,
    version: str = "1",
) -> TrainingResult:
    """Measure every approach by nested CV, then fit the shipped one on all photos.

    Args:
        data_dir: Folder with ``clean/`` and ``overflow/`` photos.
        detector: The ONNX detector whose features are used (its card must be findable).
        now: Creation time written into the artefact.
        folds: Outer folds of the repeated stratified k-fold (capped at the smaller class's size).
        repeats: Repetitions of the outer k-fold.
        loo_repeats: Runs of leave-one-out, each with other inner-loop shuffles.
        seed: Seed of every split.
        progress: Wraps loops to show progress (tqdm in the CLI).
        version: Version written into the artefact.

    Raises:
        BinTrainingError: Bad photo folder or photos.
        BinClassifierError: Detector missing or not the one the layers belong to.
    """
    photos = load_photos(data_dir)
    if not detector.is_file():
        raise BinTrainingError(f"detector {detector}: no such file (pass --detector)")
    spec = FeatureSpec(layers=YOLOX_NANO_LAYERS)
    extractor = BinFeatureExtractor(detector, spec, file_sha256(detector))
    card = extractor.card
    labels = np.array([p.label for p in photos])
    features = feature_set(extract_features(photos, extractor, progress), labels, spec)
    kfold = nested_cv(
        features,
        repeated_kfold_splits(labels, folds, repeats, seed),
        repeats,
        f"{min(folds, int(np.bincount(labels).min()))}-fold x{repeats}",
        seed=seed,
        progress=progress,
    )
    # Leave-one-out has one partition; running it again with other inner-loop shuffles gives its spread.
    loo_splits = list(LeaveOneOut().split(labels)) * loo_repeats
    loo_scheme = f"leave-one-out x{loo_repeats}"
    loo = nested_cv(features, loo_splits, loo_repeats, loo_scheme, seed=seed, progress=progress)
    shipped = next(a for a in APPROACHES if a.name == SHIPPED)
    everyone = np.arange(len(labels))
    held_out = out_of_fold_logits(features, everyone, shipped.blocks, int(np.bincount(labels).min()), seed)
    choice = best_choice(held_out, labels, shipped)
    metrics = {
        "shipped": SHIPPED,
        "chosen_c": choice,
        "note": (
            "nested CV: approaches that choose C choose it on the outer training photos only; "
            "grid-mean chooses nothing (it averages the heads of the whole C grid)"
        ),
        "approaches": {
            a.name: {
                "description": a.description,
                "kfold": kfold[a.name].summary(),
                "loo": loo[a.name].summary(),
            }
            for a in APPROACHES
        },
    }
    artefact = BinStateArtefact(
        format=BIN_STATE_FORMAT,
        name="bin-state",
        version=version,
        created=now.isoformat(timespec="seconds"),
        detector=DetectorReference(
            name=card.name, version=card.version, sha256=card.sha256 or "", file_name=detector.name
        ),
        features=spec,
        head=fit_head(features, choice),
        metrics=metrics,
        data=_data_provenance(data_dir, photos),
    )
    return TrainingResult(artefact, photos, kfold, loo, folds, repeats)


def write_artefact(artefact: BinStateArtefact, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(artefact.model_dump_json(indent=1) + "\n", encoding="utf-8")


# --- Report -----------------------------------------------------------------------------------

THUMB = 128  # longer side of a contact-sheet thumbnail
EXPLORATION = """\
Before this pipeline was fixed, single choices were compared on the same 22 photos with C picked
on all of them, so these numbers are optimistic (and the best of them more so): repeated
stratified 7-fold, mean accuracy.

| features (YOLOX-Nano, whole photo letterboxed to 416) | accuracy |
|---|---|
| one backbone map, channel mean: dark3 / dark4 / dark5 | 0.77 / 0.79 / 0.65 |
| one neck map, channel mean: pan_out2 / pan_out1 / pan_out0 | 0.67 / 0.82 / 0.79 |
| head stems (first conv of the cls/reg towers), channel mean | 0.65 to 0.74 |
| channel max or generalised-mean (p = 3) pooling instead of the mean | 0.47 to 0.85, mostly lower |
| 80 COCO class scores (max objectness x class over the photo) | 0.76 |
| pan_out1 + pan_out0, mean and standard deviation per channel | 0.85 |
| the same, averaged with 2x2 overlapping tiles (higher resolution) | 0.86 |
| the same, detected people, bicycles and vehicles cut out of the pooling (as the edge does) | 0.79 to 0.83 |
| multiple-instance: per-cell classifier, photo score = mean of its top cells | 0.77 to 0.85 |
| colour and edge statistics | 0.72 to 0.83 |
| sum of the deep and colour logits, best C pair | 0.88 to 0.89 |

Under nested cross-validation (C chosen inside each training fold) every variant tried lands
between 0.60 and 0.85: objectness statistics 0.60, PCA to 8 components 0.64, tiles alone 0.73,
lower part of the photo only 0.74, spatial pyramids 0.76 to 0.79, crops as extra training views
0.80, diagonal LDA 0.80 to 0.81, early fusion 0.83, plain deep features 0.80 to 0.84, shrinkage
LDA 0.85 (5 repeats; within the noise of logistic regression and far slower). Adding 9 clean
street scenes from the other shared CCTV stills as extra negatives made it worse (0.76 to 0.78).
The gap between the two tables is the optimism of choosing on 22 photos.

Second round (issue 5 follow-up). The variants below were listed before any of them was run, on
the same features and the same outer splits as the approaches above (7-fold x10, seed 0);
hyper-parameters are chosen in a 6-fold inner loop unless said otherwise:

| variant | accuracy, 7-fold x10 |
|---|---|
| v1 recipe (fused, C chosen by balanced accuracy, then log-loss) | 0.818 ± 0.035 |
| the same, C chosen by balanced accuracy over 3 inner repeats | 0.823 ± 0.047 |
| the same, C chosen by log-loss over 3 inner repeats | 0.795 ± 0.042 |
| **each block's logit the mean over its C grid, nothing chosen (shipped)** | **0.886 ± 0.030** |
| signed square root of the deep features | 0.818 ± 0.041 |
| all six maps (dark3 to dark5, pan_out2 to pan_out0) as one deep block | 0.805 ± 0.054 |
| the backbone maps (dark3 to dark5) as a third block | 0.791 ± 0.074 |
| five 75 % crops and their mirrors as extra training views; photo and mirror scored | 0.759 ± 0.058 |
| the same crops also averaged at test time (12 views) | 0.755 ± 0.030 |
| the same, with the C grid mean | 0.736 ± 0.018 |
| linear SVM, C chosen | 0.800 ± 0.062 |
| ridge classifier, alpha chosen | 0.823 ± 0.069 |
| kNN on the deep features (cosine, class-balanced vote, k of 1, 3, 5 chosen) | 0.595 ± 0.092 |
| shrinkage LDA | not finished (too slow on the shared CPU); 0.85 on 5 repeats in the first round |
| an inner loop choosing among every variant and hyper-parameter above | 0.777 ± 0.094 |

How far to trust the shipped number: the grid mean went on the list knowing the v1 table of
fixed C pairs (outer-fold scores: most single pairs beat the inner loop's choice), and it is
shipped because it scored best of the list. Letting an inner loop choose among the list scores
only 0.777: on about 19 photos the inner loop prefers whatever fits its own folds. The grid mean
itself chooses nothing from the photos, but its score depends on the outer shuffle: with seeds
1, 2 and 3 (7-fold x10 each) it scores 0.877, 0.836 and 0.845 (the v1 recipe 0.809, 0.759 and 0.782);
leave-one-out, which has no shuffle, gives 0.864. Read it as about 0.86, just above the
target.
"""


CCTV_CHECK = """\
The photos are phone shots of whole scenes; the edge sees a CCTV crop of a drawn site. On the
real kerbside bin site of the shared Frigate still (180 x 59 px crop, with the synthetic rubbish
and lighting of the edge's bin tests), the raw probability of the *clean* site is about 0.98 to
0.99, and a pile of 7 items raises the logit by only about 4 (from about 4 to about 8). So the edge estimator
calibrates by default: for its first 300 s a site is taken to be clean, and later judgements are
measured from that level (`calibrate_s`, `calibrated_clean_probability` in the estimator
options). With that, the bin rule raises no event on the clean site over 20 minutes of slow light
drift and flags the pile after its dwell, ending the episode after the pile is taken away
(`tests/edge/test_bin_classifier_estimator.py::test_rule_flags_a_pile_at_a_real_cctv_bin_site`).
A sudden cloud (gain 0.62 to 0.74, gamma 1.12) lowers the logit by about 7 (v1: about 6), more
than the pile raises it: under such a change the pile was missed. Retraining on bin-site crops from the
operators' verdicts is what the estimator needs before it can replace `reference_change`.
"""


def _caption(photo: Photo, probability: float) -> tuple[str, tuple[int, int, int]]:
    predicted = int(probability >= THRESHOLD)
    ok = predicted == photo.label
    text = f"{('clean', 'overflow')[photo.label]} p={probability:.2f}"
    return (text, (40, 150, 40) if ok else (30, 30, 220))


def write_contact_sheet(photos: list[Photo], probability: np.ndarray, path: Path, columns: int = 6) -> None:
    """Thumbnails of the photos, each with its true class and held-out overflow probability.

    A green frame marks a photo the held-out model got right, red one it got wrong. Colours are
    posterised (16 levels) so the PNG stays small.
    """
    tiles = []
    for photo, p in zip(photos, probability, strict=True):
        image = read_photo(photo)
        scale = THUMB / max(image.shape[:2])
        thumb = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        text, colour = _caption(photo, float(p))
        tile = np.full((THUMB + 28, THUMB + 8, 3), 255, np.uint8)
        cv2.rectangle(tile, (0, 0), (THUMB + 7, THUMB + 7), colour, 4)
        top, left = 4 + (THUMB - thumb.shape[0]) // 2, 4 + (THUMB - thumb.shape[1]) // 2
        tile[top : top + thumb.shape[0], left : left + thumb.shape[1]] = thumb
        cv2.putText(tile, text, (4, THUMB + 24), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
        tiles.append(tile)
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    sheet = (np.vstack(rows) // 16) * 16
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def _pm(summary: dict[str, Any], key: str) -> str:
    return f"{summary[key + '_mean']:.3f} ± {summary[key + '_std']:.3f}"


def _confusion_table(confusion: list[list[int]]) -> str:
    (tn, fp), (fn, tp) = confusion
    return (
        "| true \\ predicted | clean | overflowing |\n|---|---|---|\n"
        f"| clean | {tn} | {fp} |\n| overflowing | {fn} | {tp} |\n"
    )


def render_report(result: TrainingResult, sheet_name: str, command: str) -> str:
    """The Markdown report of a training run (see ``models/bin_state_v2.md``)."""
    artefact = result.artefact
    metrics = artefact.metrics["approaches"]
    shipped_k, shipped_l = metrics[SHIPPED]["kfold"], metrics[SHIPPED]["loo"]
    counts = artefact.data["counts"]
    majority = max(counts.values()) / sum(counts.values())
    met = "meets" if shipped_k["accuracy_mean"] >= TARGET_ACCURACY else "does not meet"
    fused_k = metrics["fused"]["kfold"]
    rows = "\n".join(
        f"| {name} | {m['description']} | {_pm(m['kfold'], 'accuracy')} "
        f"({m['kfold']['accuracy_min']:.2f} to {m['kfold']['accuracy_max']:.2f}) | "
        f"{_pm(m['kfold'], 'balanced_accuracy')} | {_pm(m['loo'], 'accuracy')} | "
        f"{_pm(m['loo'], 'balanced_accuracy')} | {max(m['kfold']['fixed_c_accuracy'].values()):.3f} |"
        for name, m in metrics.items()
    )
    fixed = "\n".join(f"| {key} | {value:.3f} |" for key, value in fused_k["fixed_c_accuracy"].items())
    header = (
        f"| approach | what | accuracy, {shipped_k['scheme']} (min to max) | balanced accuracy "
        f"| accuracy, {shipped_l['scheme']} | balanced accuracy | best fixed C (optimistic) |"
    )
    layers = ", ".join(
        f"`{layer.tensor}` ({layer.name}, {layer.channels} ch)" for layer in artefact.features.layers
    )
    return f"""# Bin-state classifier `{artefact.name}` v{artefact.version}

Overflowing or clean, from one image of a bin site; the edge's `bin_classifier` estimator
(`curbwatch.edge.bin_classifier.BinClassifierEstimator`) runs it in place of the model-free
`reference_change` estimator. Artefact: `models/bin_state_v2.json` (format `{artefact.format}`),
trained {artefact.created} with

    {command}

## Result

The shipped model (**{SHIPPED}**) has a cross-validated accuracy of
**{_pm(shipped_k, "accuracy")}** (repeated stratified {shipped_k["scheme"]}, mean ± std over the
repeats) and {_pm(shipped_l, "accuracy")} under {shipped_l["scheme"]}; balanced accuracy
{_pm(shipped_k, "balanced_accuracy")}. It therefore **{met} the {TARGET_ACCURACY} target** on photos it
has not seen. Always answering "overflowing" scores {majority:.3f}. It chooses nothing from the
photos: the v1 recipe (**fused**), the same features and head with one C per block chosen in an
inner loop, scores {_pm(fused_k, "accuracy")}: on about 19 photos the inner loop's choice is
noise, worse than most single C pairs fixed in advance (see below). With other outer
shuffles the shipped model scores 0.836 to 0.886 (see "What else was tried"): about 0.86. Most
errors are clean photos called overflowing (see the confusion matrix): street clutter (bicycles
by the bins, a dusk scene with lit windows) looks like rubbish to every feature set tried.

## Data

`{artefact.data["folder"]}`: {counts["clean"]} clean and {counts["overflow"]} overflowing street-level
phone photos of Amsterdam waste containers. Origin: {artefact.data.get("origin", "unknown")}
Licence: {artefact.data.get("licence", "unknown")} Every photo's sha256 is in the artefact.
These are phone photos of whole scenes, not CCTV crops of a drawn bin site: the
edge's crops are smaller, steadier and at another angle, so expect a different accuracy there
until the classifier is retrained on bin-site verdicts.

## Method

- Features: the detector `{artefact.detector.name}` {artefact.detector.version} (sha256
  `{artefact.detector.sha256[:16]}...`), its neck maps {layers} exposed as extra graph outputs of
  the unchanged ONNX file (built in memory at load, nothing stored). The photo is shrunk by area
  averaging to the detector input, letterboxed by the detector's own codec, and each map is pooled
  over the visible site (channel mean and standard deviation; on the edge, people and vehicles cut
  out of the site mask do not count). Colour and edge statistics of the site are appended
  ({COLOUR_FEATURES} values: hue, saturation, value, gradient histograms, edge density, brown and
  white shares).
- Views: the photo and its mirror image; both train, and a photo's logit is their mean.
- Classifier: per block, standardisation and L2 logistic regression with balanced class weights,
  fitted at every C of the block's grid {C_GRID}; the block's logit is the mean over its grid and
  the shipped logit is the sum of the two blocks' (the mean of the 9 C pairs' fused models: again
  one linear model over all features), threshold {artefact.head.threshold}.
- Measurement: cross-validation, nested for the approaches that choose. The outer loop holds
  photos out; where an approach chooses a C per block (colour, deep, fused), the inner loop
  (stratified 6-fold on the outer training photos only) picks it by balanced accuracy, then
  log-loss. The shipped approach chooses nothing, so it needs no inner loop. Reported numbers are
  on held-out photos only. Spread: std over the outer repeats (for leave-one-out, over reruns
  with other inner-loop shuffles).
- The shipped weights are fitted on all photos with C = {artefact.metrics["chosen_c"]}.
- Baselines: the colour statistics alone (below). The model-free `reference_change` estimator
  cannot judge single photos: it needs a clean reference of the same site, and no photo has one.

## Accuracy per approach

{header}
|---|---|---|---|---|---|---|
{rows}

The last column is the best accuracy had one C been fixed in advance, picked after seeing all
photos; it is optimistic. For the fused model each fixed C pair gives ({shipped_k["scheme"]}); the
shipped model averages these nine models' logits:

| C | accuracy |
|---|---|
{fixed}

## Confusion matrix of the shipped model

Summed over the {result.repeats} repeats of {shipped_k["scheme"]} ({result.repeats} x 22 predictions):

{_confusion_table(shipped_k["confusion"])}
{shipped_l["scheme"]}:

{_confusion_table(shipped_l["confusion"])}
## Photos

Each photo with its true class and its mean held-out probability of overflowing over the
{shipped_k["scheme"]} repeats (green: right, red: wrong).

![contact sheet]({sheet_name})

## On a CCTV bin site

{CCTV_CHECK}
## What else was tried

{EXPLORATION}
## Limits

- 22 photos: one photo is 4.5 accuracy points; the spread above is over data splits, not over
  new photos, and the true accuracy on other photos may differ by more. Other outer shuffles
  give 0.836 to 0.886 for the shipped model (see the second round above): about 0.86.
- Phone photos of whole scenes, not CCTV crops of a bin site; night photos are few. On a CCTV
  site the raw scores are off and sensitive to sudden lighting changes (see above).
- The features are those of a COCO detector that has no rubbish class; it sees clutter, not
  rubbish as such.
"""


def write_report(result: TrainingResult, report: Path, sheet: Path, command: str) -> None:
    """Write the Markdown report and its contact sheet (held-out probabilities of the shipped model)."""
    write_contact_sheet(result.photos, result.kfold[SHIPPED].probability, sheet)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(result, sheet.name, command), encoding="utf-8")
