"""Subprocess half of the parity test: a varied-score Ultralytics model through curbwatch's export.

Builds a yolov8n from its yaml with recomputed BatchNorm statistics (``tools/make_ultralytics_model``
explains why), saves it as weights, exports those with :func:`curbwatch.training.export.export_onnx`
(curbwatch metadata included) and records Ultralytics' own ``predict`` on the exported ONNX. Run as
a subprocess so the test process never imports torch.

Usage:
    python -m tests.training.ultralytics_parity --out build/x --names coco_classes.txt a.jpg b.jpg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from curbwatch.training.export import Provenance, export_onnx
from curbwatch.training.train import import_ultralytics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--names", type=Path, required=True, help="class names, one per line (as the yaml's nc)"
    )
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--conf", type=float, default=0.15)
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    import_ultralytics()
    from tools.make_ultralytics_model import build_model, predict

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "parity.pt"
    names = [line.strip() for line in args.names.read_text().splitlines() if line.strip()]
    build_model("yolov8n.yaml", names, 0, args.images, args.imgsz).save(str(weights))
    provenance = Provenance("parity", "7", dataset_sha256="ab" * 32, parent="yolov8n.yaml")
    onnx_path = export_onnx(weights, args.out / "parity.onnx", provenance, imgsz=args.imgsz)
    found = predict(onnx_path, args.images, args.imgsz, args.conf, args.iou, 300)
    (args.out / "predictions.json").write_text(json.dumps(found))


if __name__ == "__main__":
    main()
