"""ONNX object detector on onnxruntime: frame in, ``Detections`` out.

The detector knows nothing about particular models: the card (``card.py``) says which family
decodes the output and what the classes are; the family codec (``families.py``) does the
letterbox and decoding; this module owns the session, thresholds, class-aware NMS and timing.

Several cameras share one detector. ``detect`` keeps no per-call state on the instance apart
from the last timings (replaced whole, never mutated), and onnxruntime's ``run`` is safe to
call from several threads, so calls need no lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from curbwatch.edge.detect.card import (
    DetectorError,
    ModelCard,
    ModelLoadError,
    UnsupportedModelError,
    resolve_card,
)
from curbwatch.edge.detect.families import Candidates, FamilyCodec, Letterbox, make_codec, to_frame
from curbwatch.edge.messages import Detections

__all__ = [
    "DetectTimings",
    "DetectorConfig",
    "DetectorConfigError",
    "DetectorError",
    "ModelLoadError",
    "OnnxDetector",
    "UnsupportedModelError",
]

logger = logging.getLogger(__name__)


class DetectorConfigError(DetectorError):
    """The detector config does not fit the model (e.g. a threshold for a class it lacks)."""


class DetectorConfig(BaseModel):
    """Settings of one shared detector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: Path = Field(title="Model path", description="ONNX file of the detector.")
    models_dir: Path | None = Field(
        default=None,
        title="Models directory",
        description="Where to look for '<stem>.card.yaml' when none sits beside the model; "
        "default: the repository's models/.",
    )
    providers: tuple[str, ...] = Field(
        default=("CPUExecutionProvider",),
        min_length=1,
        title="Execution providers",
        description="onnxruntime providers in priority order (CUDA, TensorRT, OpenVINO, CPU); ones not "
        "installed are dropped with a warning.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        title="Intra-op threads",
        description="Threads one inference may use; 0 lets onnxruntime pick (all cores). Lower it when "
        "several processes share the CPU.",
    )
    score_threshold: float = Field(
        default=0.3, ge=0.0, le=1.0, title="Score threshold", description="Minimum score for a box."
    )
    class_thresholds: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict,
        title="Per-class thresholds",
        description="Class name -> minimum score, overriding score_threshold for that class.",
    )
    nms_iou: float = Field(
        default=0.45,
        gt=0.0,
        le=1.0,
        title="NMS IoU",
        description="Boxes of the same class overlapping more than this are merged; lower merges more.",
    )
    max_detections: int = Field(
        default=100, gt=0, le=10000, title="Max detections", description="Most boxes kept per image."
    )


@dataclass(frozen=True)
class DetectTimings:
    """Wall time of the last detect call, split so pipeline overhead can be compared with the model.

    Attributes:
        preprocess_s: Letterbox and tensor building.
        inference_s: ``session.run`` alone.
        postprocess_s: Decoding, thresholds and NMS.
        batch_size: Images handled by the call.
    """

    preprocess_s: float
    inference_s: float
    postprocess_s: float
    batch_size: int

    @property
    def total_s(self) -> float:
        return self.preprocess_s + self.inference_s + self.postprocess_s


def _select_providers(requested: tuple[str, ...]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = [name for name in requested if name in available]
    dropped = [name for name in requested if name not in available]
    if dropped:
        logger.warning("onnxruntime providers not available, dropped: %s", ", ".join(dropped))
    if not chosen:
        logger.warning("none of the requested providers is available; using CPUExecutionProvider")
        chosen = ["CPUExecutionProvider"]
    return chosen


def open_session(config: DetectorConfig) -> ort.InferenceSession:
    """An onnxruntime session for the config's model, providers and threads (the detector's own)."""
    path = config.model_path
    if not path.is_file():
        what = "a directory" if path.is_dir() else "nothing"
        raise ModelLoadError(f"model file {path}: expected an ONNX file, found {what}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    try:
        return ort.InferenceSession(str(path), options, providers=_select_providers(config.providers))
    except Exception as exc:  # onnxruntime raises bare RuntimeError subclasses for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"model file {path}: expected an ONNX model onnxruntime can load, but it refused it: {first_line}"
        ) from exc


class OnnxDetector:
    """Runs an ONNX detector on BGR frames.

    Args:
        config: Model path, providers, thresholds. Lower ``score_threshold`` finds more objects
            (and more false alarms, which the tracker's score gating must absorb); ``nms_iou``
            trades merging neighbours (low) against duplicate boxes (high).

    Raises:
        ModelLoadError: Missing or unloadable file, or an invalid card.
        UnsupportedModelError: No card, unknown family, or outputs that do not fit the card.
        DetectorConfigError: Per-class thresholds name classes the model does not have.

    Example:
        >>> detector = OnnxDetector(DetectorConfig(model_path=Path("yolox_nano.onnx")))
        >>> detections = detector.detect(frame.image)
        >>> detector.last_timings.inference_s
    """

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self._session = open_session(config)
        source = str(config.model_path)
        metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self._card = resolve_card(config.model_path, config.models_dir, metadata)
        self._codec: FamilyCodec = make_codec(self._card)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise UnsupportedModelError(
                f"{source}: expected one image input and one output, found {len(inputs)} inputs, "
                f"{len(outputs)} outputs"
            )
        self._codec.check_io(inputs[0].shape, outputs[0].shape, source)
        self._input_name, self._output_name = inputs[0].name, outputs[0].name
        batch_dim = inputs[0].shape[0]
        self._batch_cap: int | None = batch_dim if isinstance(batch_dim, int) else None
        self._thresholds = self._build_thresholds(config.score_threshold, config.class_thresholds)
        self.threshold_settings: tuple[float, dict[str, float]] = (
            config.score_threshold,
            dict(config.class_thresholds),
        )
        self.last_timings: DetectTimings | None = None
        logger.info(
            "detector %s %s (%s, %s classes, input %s, batch %s) on %s",
            self._card.name,
            self._card.version,
            self._card.family,
            len(self._card.class_names),
            self._card.input_size_hw,
            self._batch_cap or "dynamic",
            self._session.get_providers()[0],
        )

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying session, for benchmarks that time ``session.run`` alone."""
        return self._session

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._card.class_names

    @property
    def max_batch(self) -> int | None:
        """Images one ``session.run`` takes: the model's fixed batch size, or None when dynamic."""
        return self._batch_cap

    @property
    def providers(self) -> list[str]:
        """Providers the session actually uses, best first."""
        return list(self._session.get_providers())

    def set_thresholds(self, score_threshold: float, class_thresholds: dict[str, float]) -> None:
        """Replace the score thresholds at run time (remote config) without reloading the model.

        The frozen ``config`` keeps what the box started with; the array swap is atomic, so a
        concurrent ``detect`` uses either the old or the new thresholds, never a mix.
        """
        if not 0.0 <= score_threshold <= 1.0 or any(not 0.0 <= v <= 1.0 for v in class_thresholds.values()):
            raise DetectorConfigError("score thresholds must lie in [0, 1]")
        self._thresholds = self._build_thresholds(score_threshold, class_thresholds)
        self.threshold_settings = (score_threshold, dict(class_thresholds))  # what a replacement model takes

    def _build_thresholds(self, score_threshold: float, class_thresholds: dict[str, float]) -> np.ndarray:
        unknown = sorted(set(class_thresholds) - set(self.class_names))
        if unknown:
            raise DetectorConfigError(
                f"class_thresholds name classes that {self._card.name} does not have: {', '.join(unknown)}"
            )
        thresholds = np.full(len(self.class_names), score_threshold, np.float32)
        for index, name in enumerate(self.class_names):
            thresholds[index] = class_thresholds.get(name, thresholds[index])
        return thresholds

    def input_tensor(self, images: list[np.ndarray]) -> np.ndarray:
        """The exact tensor ``session.run`` receives for these frames (benchmarks, parity checks)."""
        for image in images:
            _check_image(image)
        return self._codec.blob([self._codec.letterbox(image)[0] for image in images])

    def detect(self, image: np.ndarray) -> Detections:
        """Detect objects in one BGR uint8 (H, W, 3) frame; boxes are in that frame's pixels."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Detect objects in several frames, in one ``session.run`` when the batch size is dynamic."""
        if not images:
            return []
        start = time.perf_counter()
        canvases, boxes = [], []
        for image in images:
            _check_image(image)
            canvas, box = self._codec.letterbox(image)
            canvases.append(canvas)
            boxes.append(box)
        prepared = time.perf_counter()
        preprocess_s, inference_s = prepared - start, 0.0
        outputs: list[np.ndarray] = []
        step = self._batch_cap or len(canvases)
        for first in range(0, len(canvases), step):
            blob_start = time.perf_counter()
            blob = self._codec.blob(canvases[first : first + step])
            run_start = time.perf_counter()
            raw = self._session.run([self._output_name], {self._input_name: blob})[0]
            run_end = time.perf_counter()
            preprocess_s += run_start - blob_start
            inference_s += run_end - run_start
            outputs.extend(raw)
        post_start = time.perf_counter()
        thresholds = self._thresholds  # one set for the whole batch, even if swapped meanwhile
        results = [
            self._finish(output, box, image, thresholds)
            for output, box, image in zip(outputs, boxes, images, strict=True)
        ]
        self.last_timings = DetectTimings(
            preprocess_s, inference_s, time.perf_counter() - post_start, len(images)
        )
        return results

    def _finish(
        self, output: np.ndarray, box: Letterbox, image: np.ndarray, thresholds: np.ndarray
    ) -> Detections:
        found = self._codec.decode(output, thresholds)
        keep = nms_by_class(found, self.config.nms_iou, self.config.max_detections)
        xyxy = to_frame(found.xyxy[keep], box, (image.shape[1], image.shape[0]))
        return Detections(xyxy, found.scores[keep], found.class_ids[keep], self.class_names)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        found = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DetectorError(f"expected a BGR uint8 (H, W, 3) image, found {found}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DetectorError(f"expected a non-empty image, found shape {image.shape}")


def nms_by_class(found: Candidates, iou: float, max_detections: int) -> np.ndarray:
    """Indices of boxes kept by class-aware NMS, best score first.

    Boxes of different classes never suppress each other: a person standing at a stall
    must not erase the stall.
    """
    if found.scores.size == 0:
        return np.zeros(0, np.int64)
    xywh = found.xyxy.astype(np.float64)
    xywh[:, 2:] -= xywh[:, :2]
    # Thresholds were applied per class already; 0 here keeps every candidate.
    # No top_k: OpenCV applies it before suppression, which would drop boxes that survive NMS.
    keep = cv2.dnn.NMSBoxesBatched(xywh, found.scores, found.class_ids, 0.0, iou)
    keep = np.asarray(keep, np.int64).reshape(-1)
    return keep[np.argsort(-found.scores[keep], kind="stable")][:max_detections]
