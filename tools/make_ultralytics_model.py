"""Build an Ultralytics detector offline, export it to ONNX and record Ultralytics' own predictions.

Used by the detector parity tests (run as a subprocess so the test process never imports torch).
No weights can be downloaded, so the network is built from its yaml. Random initial weights give
every anchor a near-identical score (~1e-4), which would make a parity test compare ties; the
BatchNorm statistics are recomputed on the images to predict on, which makes scores and boxes vary
with the image content. Quality is irrelevant here: the test checks that our
letterbox, decoding and NMS reproduce Ultralytics' on the same ONNX graph.

Usage:
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false YOLO_CONFIG_DIR=build/ultralytics \\
    python tools/make_ultralytics_model.py --cfg yolov8n.yaml --imgsz 320 --out build/x.onnx \\
        --names names.txt --predict a.jpg b.jpg --conf 0.25 --json build/x.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path


def build_model(cfg: str, names: list[str], seed: int, calibration: list[str], imgsz: int):
    import cv2
    import numpy as np
    import torch
    from torch import nn
    from ultralytics import YOLO
    from ultralytics.data.augment import LetterBox

    torch.manual_seed(seed)
    model = YOLO(cfg)
    model.model.names = dict(enumerate(names))
    net = model.model
    boxer = LetterBox(new_shape=(imgsz, imgsz), auto=False)
    canvases = [boxer(image=cv2.imread(path))[..., ::-1] for path in calibration]
    batch = torch.from_numpy(np.stack(canvases).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    with torch.no_grad():
        # Default init shrinks activations ~10x per layer, so every anchor scores the same. Recomputing
        # the BatchNorm statistics on real images restores unit-scale features (and so varied outputs).
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        net.train()
        for _ in range(2):
            net(batch)
        net.eval()
        for branch in net.model[-1].cv3:  # class logits: mostly unlikely, some confident
            branch[-1].bias.normal_(-4.0, 1.0)
    return model


def export(model, imgsz: int, out: Path, dynamic: bool) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Ultralytics writes the export beside its source name in the working directory; keep it out of the repo.
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        model.ckpt_path = None
        exported = Path(
            model.export(
                format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=False, opset=17, project=scratch
            )
        )
        shutil.move(str(exported), out)
    return out


def predict(onnx_path: Path, images: list[str], imgsz: int, conf: float, iou: float, max_det: int) -> dict:
    from ultralytics import YOLO

    model = YOLO(str(onnx_path), task="detect")
    results = {}
    for image in images:
        # rect=False: on a dynamic-shape export predict() would otherwise shrink the canvas to the
        # image's aspect ratio, while the edge always feeds the card's fixed input size.
        result = model.predict(
            image, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, rect=False, verbose=False
        )[0]
        boxes = result.boxes
        results[image] = {
            "xyxy": boxes.xyxy.cpu().numpy().tolist(),
            "scores": boxes.conf.cpu().numpy().tolist(),
            "class_ids": boxes.cls.cpu().numpy().astype(int).tolist(),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", required=True, help="model yaml, e.g. yolov8n.yaml or yolo11n.yaml")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--names", type=Path, required=True, help="class names, one per line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--static", action="store_true", help="fixed batch 1 instead of a dynamic batch")
    parser.add_argument("--predict", nargs="*", default=[], help="images to run Ultralytics predict on")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--max-det", type=int, default=300)
    parser.add_argument("--json", type=Path, help="where to write the predictions")
    args = parser.parse_args()

    names = [line.strip() for line in args.names.read_text().splitlines() if line.strip()]
    model = build_model(args.cfg, names, args.seed, args.predict, args.imgsz)
    onnx_path = export(model, args.imgsz, args.out, dynamic=not args.static)
    if args.predict and args.json:
        found = predict(onnx_path, args.predict, args.imgsz, args.conf, args.iou, args.max_det)
        args.json.write_text(json.dumps(found))
    print(onnx_path)


if __name__ == "__main__":
    main()
