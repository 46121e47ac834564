"""The benchmarks' street video: a real CCTV still as a 5 fps video (noise, light drift, a passing blob).

A real street where little moves, so the motion gate, the detector and the rules run as on a quiet
live camera (``tools/bench.py``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

FPS = 5.0


def render_street_video(
    still: Path, out: Path, seconds: float, seed: int = 7, passers_by: bool = True
) -> Path:
    """A 1280x720 5 fps video of a real ``still``: camera noise, slow light drift, a passing blob."""
    wh = (1280, 720)
    image = cv2.imread(str(still))
    if image is None:
        raise FileNotFoundError(f"cannot read the still {still}")
    base = cv2.resize(image, wh, interpolation=cv2.INTER_AREA).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, wh)
    if not writer.isOpened():
        raise OSError(f"cannot write {out}")
    rng = np.random.default_rng(seed)
    frames = int(seconds * FPS)
    try:
        for index in tqdm(range(frames), desc="rendering street", unit="frame"):
            t = index / FPS
            light = 1.0 + 0.04 * np.sin(2 * np.pi * t / 90.0)
            frame = base * light + rng.normal(0.0, 3.0, base.shape).astype(np.float32)
            if passers_by:
                _draw_passer_by(frame, t)
            writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    finally:
        writer.release()
    return out


def _draw_passer_by(frame: np.ndarray, t: float) -> None:
    # A dark blob rides along the near lane for 6 s of every 30 s: motion the gate must notice.
    phase = t % 30.0
    if phase > 6.0:
        return
    x = int(40 + phase / 6.0 * 1180)
    cv2.rectangle(frame, (x, 540), (x + 60, 600), (40, 40, 60), thickness=-1)
