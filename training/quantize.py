"""INT8 static quantization with onnxruntime, and what it costs and gains on the edge.

The calibration images go through the edge detector's own pre-processing (``OnnxDetector.input_tensor``:
its letterbox, colour order and scaling), so the activation ranges are those the model will see.
Weights are quantized per output channel, in QDQ format (onnxruntime fuses the pairs into integer
kernels). The detect head's decoding (box distribution, anchors, the concatenation of pixel
coordinates with 0..1 class scores) stays in float: one INT8 scale cannot hold both ranges, and
those nodes cost next to nothing.

Speed is the median of ``session.run`` over the same prepared inputs for both models, at 1 and 2
intra-op threads; accuracy is mAP50 of both through the edge detector on the same images.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from curbwatch.training.metrics import detection_map, load_split
from curbwatch.training.registry import Quantization, Registry, SpeedRow

if TYPE_CHECKING:
    from curbwatch.edge.detect.onnx import OnnxDetector

logger = logging.getLogger(__name__)

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
_MODULE_NODE = re.compile(r"^/model\.(\d+)/")
_HEAD_CONVS = ("/cv2.", "/cv3.")  # the box and class convolution branches of the Ultralytics Detect head


class QuantizationError(Exception):
    """The model cannot be quantized or measured; the message says why."""


def _edge_detector(model: Path) -> OnnxDetector:
    from curbwatch.edge.detect.onnx import DetectorConfig, DetectorError, OnnxDetector

    try:
        return OnnxDetector(DetectorConfig(model_path=model))
    except DetectorError as exc:
        raise QuantizationError(f"the edge detector cannot load {model}: {exc}") from exc


def edge_inputs(model: Path, images: Sequence[Path]) -> list[np.ndarray]:
    """The exact (1, 3, H, W) tensors the edge feeds ``model`` for these images."""
    import cv2

    detector = _edge_detector(model)
    tensors = []
    for path in images:
        image = cv2.imread(str(path))
        if image is None:
            raise QuantizationError(f"{path}: not a readable image")
        tensors.append(detector.input_tensor([image]))
    return tensors


def head_decoding_nodes(model_path: Path) -> list[str]:
    """Nodes of the last module (the Detect head) outside its convolution branches.

    Ultralytics exports name nodes ``/model.<index>/...``; the head is the highest index.
    """
    import onnx

    names = [node.name for node in onnx.load(str(model_path)).graph.node]
    indices = [int(m.group(1)) for m in map(_MODULE_NODE.match, names) if m]
    if not indices:
        logger.warning("%s: no Ultralytics node names; quantizing every node", model_path)
        return []
    head = f"/model.{max(indices)}/"
    return [name for name in names if name.startswith(head) and not any(part in name for part in _HEAD_CONVS)]


class EdgeCalibrationReader(CalibrationDataReader):
    """Calibration inputs for onnxruntime: tensors prepared exactly as the edge prepares frames."""

    def __init__(self, input_name: str, tensors: list[np.ndarray]) -> None:
        super().__init__()
        self._input_name = input_name
        self._tensors: Iterator[np.ndarray] = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._tensors, None)
        return None if tensor is None else {self._input_name: tensor}


def copy_metadata(source: Path, target: Path, extra: dict[str, str]) -> None:
    """Give ``target`` the ONNX metadata of ``source`` plus ``extra`` (one value per key)."""
    import onnx

    values = {prop.key: prop.value for prop in onnx.load(str(source)).metadata_props}
    values.update(extra)
    model = onnx.load(str(target))
    del model.metadata_props[:]
    for key, value in values.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(target))


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration_images: Sequence[Path],
    *,
    method: CalibrationMethod = "minmax",
) -> tuple[Path, int, str]:
    """Static INT8 quantization (QDQ, per-channel QInt8 weights, QUInt8 activations).

    Args:
        fp32: The FP32 ONNX model.
        out: Where to write the INT8 model.
        calibration_images: Images for the activation ranges (the training split's, not the evaluation's).
        method: Calibration method.

    Returns:
        The INT8 path, how many head nodes stayed float, and a description of the method.

    Raises:
        QuantizationError: No calibration images or onnxruntime refused the model.
    """
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_images:
        raise QuantizationError("INT8 calibration needs at least one image")
    tensors = edge_inputs(fp32, calibration_images)
    excluded = head_decoding_nodes(fp32)
    methods = {"minmax": OrtMethod.MinMax, "percentile": OrtMethod.Percentile, "entropy": OrtMethod.Entropy}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            # Symbolic shape inference cannot follow the dynamic anchors of the head; ONNX's own
            # shape inference and the graph optimisations are what the quantizer needs.
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # onnxruntime's optional pre-pass: the model still quantizes without it
            logger.warning("quantization pre-processing failed (%s); quantizing the model as exported", exc)
            prepared = fp32
        import onnxruntime as ort

        input_name = (
            ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        )
        try:
            quantize_static(
                str(prepared),
                str(out),
                EdgeCalibrationReader(input_name, tensors),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=methods[method],
                calibration_providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises bare exceptions from its graph passes
            raise QuantizationError(f"onnxruntime could not quantize {fp32}: {exc}") from exc
    description = (
        f"onnxruntime quantize_static {method} on {len(tensors)} images, QDQ, per-channel QInt8 weights, "
        f"QUInt8 activations, {len(excluded)} head decoding nodes kept float"
    )
    copy_metadata(fp32, out, {"quantization": description})
    return out, len(excluded), description


def median_run_ms(
    models: Sequence[Path], tensors: Sequence[np.ndarray], threads: int, runs: int
) -> list[float]:
    """Median wall time of one ``session.run`` of each model (edge session settings).

    The models take turns on the same input, run after run, so a busy machine slows them alike and
    the ratio of their times stays fair.
    """
    from curbwatch.edge.detect.onnx import DetectorConfig, open_session

    sessions = [open_session(DetectorConfig(model_path=model, intra_op_threads=threads)) for model in models]
    names = [session.get_inputs()[0].name for session in sessions]
    for session, name in zip(sessions, names, strict=True):
        for tensor in tensors[: min(3, len(tensors))]:
            session.run(None, {name: tensor})
    times: list[list[float]] = [[] for _ in sessions]
    for index in range(runs):
        tensor = tensors[index % len(tensors)]
        for session, name, spent in zip(sessions, names, times, strict=True):
            start = time.perf_counter()
            session.run(None, {name: tensor})
            spent.append(time.perf_counter() - start)
    return [1000.0 * statistics.median(spent) for spent in times]


def _map50(model: Path, images: Sequence[Path], truth: Sequence, class_names: Sequence[str]) -> float:
    from curbwatch.training.evaluate import edge_predictions

    _, predicted = edge_predictions(model, images)
    return detection_map(predicted, truth, class_names).map50


def compare_int8(
    fp32: Path,
    int8: Path,
    data_yaml: Path,
    registry: Registry,
    *,
    calibration_images: int,
    excluded_nodes: int,
    method: str,
    split: str = "val",
    runs: int = 50,
    threads: Sequence[int] = (1, 2),
    speed_images: int = 8,
) -> Quantization:
    """Speed-up and mAP50 change of the INT8 model against FP32 on the same images.

    Args:
        fp32: The FP32 model.
        int8: Its INT8 variant.
        data_yaml: Dataset whose ``split`` gives the images (and ground truth).
        registry: Registry whose base the recorded file path is relative to.
        calibration_images: How many images calibrated the INT8 model (recorded).
        excluded_nodes: Nodes kept float (recorded).
        method: How it was quantized (recorded).
        split: Split to measure on.
        runs: Timed ``session.run`` calls per model and thread count.
        threads: Intra-op thread counts to time.
        speed_images: Distinct images the timing cycles over.
    """
    labelled = load_split(data_yaml, split)
    paths = [item.path for item in labelled.images]
    truth = [item.truth for item in labelled.images]
    tensors = edge_inputs(fp32, paths[:speed_images])
    speed = []
    load = os.getloadavg()[0]
    for count in threads:
        fp32_ms, int8_ms = median_run_ms([fp32, int8], tensors, count, runs)
        speed.append(
            SpeedRow(
                threads=count,
                fp32_ms=round(fp32_ms, 3),
                int8_ms=round(int8_ms, 3),
                speedup=round(fp32_ms / int8_ms, 3),
            )
        )
        logger.info(
            "%d threads: FP32 %.2f ms, INT8 %.2f ms (x%.2f)", count, fp32_ms, int8_ms, fp32_ms / int8_ms
        )
    map_fp32 = _map50(fp32, paths, truth, labelled.class_names)
    map_int8 = _map50(int8, paths, truth, labelled.class_names)
    return Quantization(
        file=registry.file_ref(int8),
        method=method,
        calibration_images=calibration_images,
        excluded_nodes=excluded_nodes,
        speed=speed,
        speed_images=len(tensors),
        runs=runs,
        load_average=round(load, 2),
        accuracy_images=len(paths),
        map50_fp32=round(map_fp32, 4),
        map50_int8=round(map_int8, 4),
        map50_delta_points=round(100 * (map_int8 - map_fp32), 2),
    )


def calibration_set(data_yaml: Path, count: int, seed: int = 0) -> list[Path]:
    """Up to ``count`` training images, spread over the split by a seeded draw."""
    images = [item.path for item in load_split(data_yaml, "train").images]
    if len(images) <= count:
        return images
    chosen = np.random.default_rng(seed).choice(len(images), size=count, replace=False)
    return [images[i] for i in sorted(chosen)]


def quantization_lines(report: Quantization) -> list[str]:
    """The speed-up and accuracy change as lines for the terminal."""
    lines = [
        f"{row.threads} thread(s): FP32 {row.fp32_ms:.2f} ms, INT8 {row.int8_ms:.2f} ms, x{row.speedup:.2f}"
        for row in report.speed
    ]
    change = f"{report.map50_delta_points:+.2f} points"
    lines.append(f"mAP50 FP32 {report.map50_fp32:.4f}, INT8 {report.map50_int8:.4f} ({change})")
    return lines
