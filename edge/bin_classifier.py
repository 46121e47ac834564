"""A learned bin-state estimator: a linear head on a detector's neck features and colour statistics.

Trained by ``curbwatch train bins`` (``training/bin_classifier.py``) and shipped as a small JSON
artefact that names the detector it reads features from by sha256; registered with the bin rule as
``bin_classifier``. Runs on numpy, OpenCV and onnxruntime only.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curbwatch.edge.bins import (
    UNKNOWN,
    BinEstimatorError,
    BinObservation,
    BinStateEstimator,
    check_site_inputs,
    register_estimator,
)
from curbwatch.edge.detect.card import DEFAULT_MODELS_DIR, DetectorError, ModelCard, resolve_card
from curbwatch.edge.detect.families import Letterbox, make_codec

logger = logging.getLogger(__name__)

BIN_STATE_FORMAT = "curbwatch.bin_state.v1"
DEFAULT_BIN_ARTEFACT = DEFAULT_MODELS_DIR / "bin_state_v2.json"
CLASS_NAMES = ("clean", "overflowing")
# colour_statistics: hue 12 + saturation 6 + value 6 + gradient 6 + edges, cardboard, white.
COLOUR_FEATURES = 33
_SHA256 = r"^[0-9a-f]{64}$"


class BinClassifierError(BinEstimatorError):
    """A bin-state classifier artefact, or the detector it was trained on, cannot be used."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorReference(_Frozen):
    """The detector whose features the classifier reads; only the file with this sha256 will do."""

    name: str = Field(min_length=1, description="Model card name of the detector.")
    version: str = Field(min_length=1, description="Model card version of the detector.")
    sha256: str = Field(pattern=_SHA256, description="sha256 of the detector's ONNX file.")
    file_name: str = Field(min_length=1, description="File name it was trained with (a hint, not checked).")


class FeatureLayer(_Frozen):
    """One feature map of the detector, exposed as an extra graph output."""

    tensor: str = Field(min_length=1, description="ONNX tensor name.")
    name: str = Field(min_length=1, description="What it is in the network (for people).")
    channels: int = Field(gt=0)
    stride: int = Field(gt=0, description="Input pixels per feature cell.")


class FeatureSpec(_Frozen):
    """How a site crop becomes a feature vector (per view: crop, and its mirror image if ``hflip``)."""

    layers: tuple[FeatureLayer, ...] = Field(min_length=1)
    pooling: Literal["masked_mean_std"] = Field(
        default="masked_mean_std",
        description="Per channel: mean and standard deviation over the feature cells, each cell weighted "
        "by the share of it inside the visible site.",
    )
    colour: bool = Field(default=True, description="Append colour and edge statistics of the visible site.")
    colour_side: int = Field(default=256, ge=32, le=2048, description="Longer side the colour stats use.")
    hflip: bool = Field(default=True, description="Average the score over the crop and its mirror image.")
    antialias: bool = Field(
        default=True,
        description="Shrink crops larger than the detector input by area averaging first: the detector's "
        "bilinear letterbox aliases when it shrinks a photo several-fold.",
    )

    @property
    def size(self) -> int:
        """Length of one view's feature vector."""
        return sum(2 * layer.channels for layer in self.layers) + (COLOUR_FEATURES if self.colour else 0)


class LinearHead(_Frozen):
    """``p = sigmoid(w . (x - mean) / std + bias)`` on one view; views are averaged in logit space."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float = Field(gt=0, lt=1, description="Probability at or above which a site overflows.")

    @model_validator(mode="after")
    def verify_shapes(self) -> LinearHead:
        if not len(self.mean) == len(self.std) == len(self.weights):
            raise ValueError(
                f"mean, std and weights must have one length, got {len(self.mean)}, {len(self.std)}, "
                f"{len(self.weights)}"
            )
        values = np.asarray([*self.mean, *self.std, *self.weights, self.bias], np.float64)
        if not np.isfinite(values).all():
            raise ValueError("mean, std, weights and bias must be finite")
        if min(self.std, default=1.0) <= 0:
            raise ValueError("std must be positive")
        return self


class BinStateArtefact(_Frozen):
    """A trained bin-state classifier (``models/bin_state_v2.json``), written by ``curbwatch train bins``."""

    format: Literal["curbwatch.bin_state.v1"]
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created: str = Field(description="When it was trained (ISO 8601).")
    class_names: tuple[str, str] = CLASS_NAMES
    detector: DetectorReference
    features: FeatureSpec
    head: LinearHead
    metrics: dict[str, Any] = Field(default_factory=dict, description="Cross-validated measurements.")
    data: dict[str, Any] = Field(default_factory=dict, description="Provenance of the training photos.")

    @model_validator(mode="after")
    def verify_size(self) -> BinStateArtefact:
        if len(self.head.weights) != self.features.size:
            raise ValueError(
                f"head has {len(self.head.weights)} weights but the features give {self.features.size} values"
            )
        return self


def load_bin_artefact(path: Path) -> BinStateArtefact:
    """Read and validate a classifier artefact.

    Raises:
        BinClassifierError: Missing or unreadable file, not JSON, or a field that does not validate.
    """
    if not path.is_file():
        raise BinClassifierError(
            f"bin classifier artefact {path}: no such file; train one with "
            f"`curbwatch train bins --data <photos> --out {path}`"
        )
    try:
        return BinStateArtefact.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise BinClassifierError(f"bin classifier artefact {path} is invalid: {problems}") from exc
    except OSError as exc:
        raise BinClassifierError(f"bin classifier artefact {path}: cannot read it: {exc}") from exc


_ONNX_FLOAT = 1  # TensorProto.DataType.FLOAT


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def add_graph_outputs(model: bytes, tensor_names: Sequence[str]) -> bytes:
    """A serialised ONNX model with the float tensors ``tensor_names`` added as extra graph outputs.

    Protobuf merges a message field that occurs twice and concatenates repeated fields, so
    appending a ``ModelProto.graph`` (field 7) that holds only ``GraphProto.output`` entries
    (field 12: a ``ValueInfoProto`` with its name, field 1, and a float tensor type, field 2)
    adds outputs without the ``onnx`` package. The edge so rebuilds the feature extractor from
    the detector file at load time and stores nothing; onnxruntime infers the shapes.
    """
    float_tensor = _length_delimited(2, _length_delimited(1, _varint(1 << 3) + _varint(_ONNX_FLOAT)))
    outputs = b"".join(
        _length_delimited(12, _length_delimited(1, name.encode()) + float_tensor) for name in tensor_names
    )
    return model + _length_delimited(7, outputs)


def _site_weights(visible: np.ndarray, box: Letterbox, canvas_hw: tuple[int, int]) -> np.ndarray:
    """float32 canvas-sized map: the share of each canvas pixel that shows the visible site.

    Args:
        visible: float32 (h, w) share of each image pixel that is visible site (a mask, or a shrunk one).
        box: Where the letterbox put the image.
        canvas_hw: Network input size.
    """
    height, width = visible.shape
    canvas_h, canvas_w = canvas_hw
    new_w = min(canvas_w - box.pad_x, max(1, round(width * box.scale_x)))
    new_h = min(canvas_h - box.pad_y, max(1, round(height * box.scale_y)))
    weights = np.zeros(canvas_hw, np.float32)
    weights[box.pad_y : box.pad_y + new_h, box.pad_x : box.pad_x + new_w] = cv2.resize(
        visible, (new_w, new_h), interpolation=cv2.INTER_AREA
    )
    return weights


def pool_feature_map(feature_map: np.ndarray, canvas_weights: np.ndarray) -> np.ndarray:
    """Per-channel weighted mean and standard deviation of a (C, H, W) map; weights at canvas size."""
    channels, height, width = feature_map.shape
    cell = cv2.resize(canvas_weights, (width, height), interpolation=cv2.INTER_AREA).astype(np.float64)
    total = float(cell.sum())
    if total <= 0:
        raise BinEstimatorError("no visible site pixel to pool features over")
    flat = feature_map.reshape(channels, -1).astype(np.float64)
    share = cell.ravel() / total
    mean = flat @ share
    var = ((flat - mean[:, None]) ** 2) @ share
    return np.concatenate([mean, np.sqrt(np.maximum(var, 0.0))])


def colour_statistics(image: np.ndarray, mask: np.ndarray, side: int = 256) -> np.ndarray:
    """Colour and edge statistics of the masked part of a BGR image (``COLOUR_FEATURES`` values).

    Saturation-weighted hue histogram, saturation, value and gradient-magnitude histograms, Canny
    edge density, and the shares of cardboard-brown and bright-white pixels: what tells rubbish
    (brown boxes, white and black bags, clutter) from paving and bins without any model.
    """
    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    weight = (
        cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA).ravel().astype(np.float64)
    )
    total = float(weight.sum())
    if total <= 0:
        raise BinEstimatorError("no visible site pixel for colour statistics")
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.float64)
    hue, sat, val = hsv[:, 0], hsv[:, 1] / 255.0, hsv[:, 2] / 255.0
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    edges = cv2.Canny(grey, 80, 160).ravel() > 0
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)).ravel()

    def histogram(values: np.ndarray, bins: int, upper: float, extra: np.ndarray | float = 1.0) -> np.ndarray:
        return np.histogram(values, bins=bins, range=(0.0, upper), weights=weight * extra)[0] / total

    cardboard = (hue >= 8) & (hue <= 25) & (sat > 0.25) & (val > 0.3)
    white = (sat < 0.12) & (val > 0.8)
    shares = [float(weight @ flag) / total for flag in (edges, cardboard, white)]
    return np.concatenate(
        [
            histogram(hue, 12, 180.0, sat),
            histogram(sat, 6, 1.0),
            histogram(val, 6, 1.0),
            histogram(magnitude, 6, 600.0),
            shares,
        ]
    )


class BinFeatureExtractor:
    """Site crop -> feature vectors, with the detector's neck maps exposed as extra outputs.

    The crop goes through the detector's own pre-processing (its family codec: letterbox, tensor
    layout); each feature map is pooled over the cells that show the visible site, so people and
    vehicles cut out of the mask and the letterbox padding do not count.

    Args:
        detector_path: The detector's ONNX file; its sha256 must be ``sha256``.
        spec: Layers, pooling and views (from the artefact).
        sha256: The detector the classifier was trained on.
        providers: onnxruntime providers, best first.
        intra_op_threads: Threads per inference (0: onnxruntime's choice).

    Raises:
        BinClassifierError: Missing detector, another sha256, no card, or layers it lacks.
    """

    def __init__(
        self,
        detector_path: Path,
        spec: FeatureSpec,
        sha256: str,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 1,
    ) -> None:
        # onnxruntime loads only when a learned estimator is configured.
        import onnxruntime as ort

        from curbwatch.edge.detect.onnx import _select_providers

        if not detector_path.is_file():
            raise BinClassifierError(
                f"detector {detector_path}: no such file; the bin classifier needs the detector it was "
                f"trained on (sha256 {sha256})"
            )
        model = detector_path.read_bytes()
        actual = hashlib.sha256(model).hexdigest()
        if actual != sha256:
            raise BinClassifierError(
                f"detector {detector_path} has sha256 {actual}, but the bin classifier was trained on the "
                f"detector with sha256 {sha256}"
            )
        self.spec = spec
        self._names = [layer.tensor for layer in spec.layers]
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        try:
            self._session = ort.InferenceSession(
                add_graph_outputs(model, self._names), options, providers=_select_providers(tuple(providers))
            )
            metadata = dict(self._session.get_modelmeta().custom_metadata_map)
            self._codec = make_codec(resolve_card(detector_path, None, metadata))
        except DetectorError as exc:
            raise BinClassifierError(f"bin classifier detector: {exc}") from exc
        except Exception as exc:  # onnxruntime raises bare RuntimeError subclasses
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BinClassifierError(
                f"detector {detector_path}: cannot expose feature tensors {self._names}: {first_line}"
            ) from exc
        self._input = self._session.get_inputs()[0].name
        self._check_layers(detector_path)

    @property
    def card(self) -> ModelCard:
        """The detector's card, bound to the file's sha256."""
        return self._codec.card

    def _check_layers(self, detector_path: Path) -> None:
        height, width = self._codec.card.input_size_hw
        shapes = {output.name: output.shape for output in self._session.get_outputs()}
        for layer in self.spec.layers:
            found = list(shapes[layer.tensor])
            want = [found[0], layer.channels, height // layer.stride, width // layer.stride]
            if len(found) != 4 or any(
                isinstance(f, int) and f != w for f, w in zip(found, want, strict=True)
            ):
                raise BinClassifierError(
                    f"detector {detector_path}: tensor {layer.tensor!r} ({layer.name}) has shape {found}, "
                    f"the artefact expects {want[1:]} per image"
                )

    def features(self, crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """float64 (views, ``spec.size``): the crop's features, then its mirror image's if ``hflip``."""
        check_site_inputs(crop, mask)
        views = [(crop, mask)]
        if self.spec.hflip:
            views.append((np.ascontiguousarray(crop[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])))
        return np.stack([self._view(image, visible) for image, visible in views])

    def _view(self, image: np.ndarray, visible: np.ndarray) -> np.ndarray:
        net_image, net_visible = image, visible.astype(np.float32)
        height, width = image.shape[:2]
        input_h, input_w = self.card.input_size_hw
        scale = min(input_h / height, input_w / width)
        if self.spec.antialias and scale < 1.0:
            size = (min(input_w, max(1, round(width * scale))), min(input_h, max(1, round(height * scale))))
            net_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            net_visible = cv2.resize(net_visible, size, interpolation=cv2.INTER_AREA)
        canvas, box = self._codec.letterbox(net_image)
        maps = self._session.run(self._names, {self._input: self._codec.blob([canvas])})
        weights = _site_weights(net_visible, box, canvas.shape[:2])
        parts = [pool_feature_map(feature_map[0], weights) for feature_map in maps]
        if self.spec.colour:
            parts.append(colour_statistics(image, visible, self.spec.colour_side))
        return np.concatenate(parts)


class BinStateClassifier:
    """A trained artefact bound to its feature extractor: site crop -> overflow probability."""

    def __init__(self, artefact: BinStateArtefact, extractor: BinFeatureExtractor) -> None:
        self.artefact = artefact
        self.extractor = extractor
        head = artefact.head
        self._mean = np.asarray(head.mean, np.float64)
        self._std = np.asarray(head.std, np.float64)
        self._weights = np.asarray(head.weights, np.float64)
        self._bias = head.bias

    def logits(self, features: np.ndarray) -> np.ndarray:
        """One logit per row of ``features`` (views, size)."""
        return ((features - self._mean) / self._std) @ self._weights + self._bias

    def logit(self, crop: np.ndarray, mask: np.ndarray) -> float:
        """The overflow logit of the visible site: the mean over the views."""
        return float(self.logits(self.extractor.features(crop, mask)).mean())

    def probability(self, crop: np.ndarray, mask: np.ndarray) -> float:
        """Probability that the visible site overflows."""
        return _sigmoid(self.logit(crop, mask))


def _sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _load_classifier(
    artefact: Path, detector: Path, providers: tuple[str, ...], threads: int, _stamps: object
) -> BinStateClassifier:
    loaded = load_bin_artefact(artefact)
    extractor = BinFeatureExtractor(detector, loaded.features, loaded.detector.sha256, providers, threads)
    logger.info(
        "bin classifier %s %s on %s (%s)", loaded.name, loaded.version, detector, loaded.detector.name
    )
    return BinStateClassifier(loaded, extractor)


def load_bin_classifier(
    artefact: Path,
    detector: Path,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 1,
) -> BinStateClassifier:
    """The classifier of ``artefact`` on ``detector``; every site of a box shares one per file pair.

    A file replaced on disk (new mtime or size) is loaded afresh.

    Raises:
        BinClassifierError: See ``load_bin_artefact`` and ``BinFeatureExtractor``.
    """
    stamps = (_stamp(artefact), _stamp(detector))
    return _load_classifier(
        artefact.resolve(), detector.resolve(), tuple(providers), intra_op_threads, stamps
    )


class BinClassifierConfig(BaseModel):
    """Settings of the learned bin-state classifier (``bins.estimator: bin_classifier``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artefact: Path = Field(
        default=DEFAULT_BIN_ARTEFACT,
        title="Classifier artefact",
        description="JSON written by `curbwatch train bins`; relative to edge.yaml's folder.",
    )
    detector: Path = Field(
        title="Detector file",
        description="The ONNX detector the classifier was trained on (its sha256 is checked); usually "
        "the same file as detector.model_path.",
    )
    interval_s: float = Field(
        default=10.0,
        ge=0,
        title="Interval (s)",
        description="Least time between two judgements of a site; a bin site changes slowly and each "
        "judgement costs two detector passes.",
    )
    calibrate_s: float = Field(
        default=300.0,
        ge=0,
        title="Site calibration (s)",
        description="For this long from the first judgement the site is taken to be clean and its mean "
        "logit becomes the site's clean level, which later judgements are measured from (no verdict "
        "meanwhile). The shipped artefact learned from phone photos; on a CCTV crop its raw scores sit "
        "at another level. 0 uses the raw scores (then a site overflowing at start is reported too).",
    )
    calibrated_clean_probability: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        title="Calibrated clean probability",
        description="What the site's clean level scores after calibration; the distance to the threshold "
        "is the change of logit that turns overflowing on.",
    )
    smooth_s: float = Field(
        default=60.0,
        ge=0,
        title="Smoothing time constant (s)",
        description="Time constant of the average of the probability; 0 uses each judgement alone.",
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        title="Overflow on",
        description="Smoothed probability that turns overflowing on; default: the artefact's threshold.",
    )
    hysteresis: float = Field(
        default=0.1,
        ge=0,
        lt=0.5,
        title="Hysteresis",
        description="Overflowing turns off at or below the on threshold minus this.",
    )
    providers: tuple[str, ...] = Field(
        default=("CPUExecutionProvider",), min_length=1, title="Execution providers"
    )
    intra_op_threads: int = Field(
        default=1, ge=0, le=256, title="Intra-op threads", description="0 lets onnxruntime pick."
    )


class BinClassifierEstimator:
    """Judges a bin site with the learned classifier, at most every ``interval_s``.

    Each judgement is the classifier's overflow logit for the visible site. For ``calibrate_s``
    from the first judgement the site is taken to be clean and its mean logit becomes the clean
    level; afterwards the logit is shifted so that level scores ``calibrated_clean_probability``.
    The score is the probability's exponential average over ``smooth_s``, and the decision has
    hysteresis (on at the threshold, off at the threshold minus ``hysteresis``). Frames between
    judgements, and the calibration, give no verdict, so the rule keeps its decision.

    Args:
        config: Files, timing and thresholds.
        classifier: A loaded classifier (tests); default: loaded (and shared) from the config's files.

    Example:
        >>> config = BinClassifierConfig(detector=Path("yolox_nano.onnx"))
        >>> est = BinClassifierEstimator(config)  # doctest: +SKIP
        >>> est.observe(crop, mask, ts=0.0)  # doctest: +SKIP
        BinObservation(score=None, overflowing=None)
    """

    def __init__(self, config: BinClassifierConfig, classifier: BinStateClassifier | None = None) -> None:
        self.config = config
        self.classifier = classifier or load_bin_classifier(
            config.artefact, config.detector, config.providers, config.intra_op_threads
        )
        on = config.threshold if config.threshold is not None else self.classifier.artefact.head.threshold
        self._on, self._off = on, max(0.0, on - config.hysteresis)
        self._calibration: list[float] = []
        self._calibration_start: float | None = None
        self._offset: float | None = None if config.calibrate_s > 0 else 0.0
        self._smoothed: float | None = None
        self._last_ts: float | None = None
        self._overflowing = False

    @property
    def calibrating(self) -> bool:
        return self._offset is None

    def observe(self, crop: np.ndarray, mask: np.ndarray, ts: float) -> BinObservation:
        """Judge the site in this frame (see ``BinStateEstimator.observe``)."""
        check_site_inputs(crop, mask)
        if self._last_ts is not None and ts - self._last_ts < self.config.interval_s:
            return UNKNOWN
        if not mask.any():
            return UNKNOWN
        logit = self.classifier.logit(crop, mask)
        previous_ts, self._last_ts = self._last_ts, ts
        if self._offset is None:
            self._calibrate(logit, ts)
            return UNKNOWN
        probability = _sigmoid(logit + self._offset)
        if self._smoothed is None or self.config.smooth_s == 0 or previous_ts is None:
            self._smoothed = probability
        else:
            alpha = 1.0 - math.exp(-max(0.0, ts - previous_ts) / self.config.smooth_s)
            self._smoothed += alpha * (probability - self._smoothed)
        if self._smoothed >= self._on:
            self._overflowing = True
        elif self._smoothed <= self._off:
            self._overflowing = False
        return BinObservation(score=min(1.0, max(0.0, self._smoothed)), overflowing=self._overflowing)

    def _calibrate(self, logit: float, ts: float) -> None:
        if self._calibration_start is None:
            self._calibration_start = ts
        self._calibration.append(logit)
        if ts - self._calibration_start >= self.config.calibrate_s:
            clean = self.config.calibrated_clean_probability
            level = float(np.mean(self._calibration))
            self._offset = math.log(clean / (1.0 - clean)) - level
            logger.info(
                "bin site calibrated from %d judgements: clean logit %.2f", len(self._calibration), level
            )


@register_estimator("bin_classifier", path_options=("artefact", "detector"))
def _bin_classifier(**options: object) -> BinStateEstimator:
    try:
        config = BinClassifierConfig.model_validate(options)
    except ValidationError as exc:
        raise BinClassifierError(f"bin_classifier options: {exc}") from exc
    return BinClassifierEstimator(config)
