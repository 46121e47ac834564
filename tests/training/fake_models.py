"""Tiny ONNX detectors with a fixed output, in Ultralytics' export format, for tests without torch.

The graph ignores its input and always outputs the same raw head ``[1, 4 + classes, anchors]``, with
Ultralytics' metadata (``names``, ``imgsz``, ``stride``, ``task``), so the edge detector loads it
without a card and decodes the given boxes on any image of the input size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

STRIDES = (8, 16, 32)


def constant_detector(
    path: Path,
    names: tuple[str, ...],
    boxes: list[tuple[int, float, float, float, float, float]],
    imgsz: int = 64,
    version: str = "1",
) -> Path:
    """Write a detector that always finds ``boxes`` = (class id, cx, cy, w, h, score) in input pixels."""
    onnx = pytest.importorskip("onnx", reason="the onnx package (train extra) builds the fake detector")
    from onnx import TensorProto, helper, numpy_helper

    anchors = sum((imgsz // s) ** 2 for s in STRIDES)
    head = np.zeros((1, 4 + len(names), anchors), np.float32)
    for anchor, (class_id, cx, cy, w, h, score) in enumerate(boxes):
        head[0, :4, anchor] = (cx, cy, w, h)
        head[0, 4 + class_id, anchor] = score
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["output0"], value=numpy_helper.from_array(head))],
        "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(head.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {
        "names": repr(dict(enumerate(names))),
        "imgsz": repr([imgsz, imgsz]),
        "stride": "32",
        "task": "detect",
        "version": version,
    }
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
