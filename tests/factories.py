"""Factory helpers for edge messages, so tests state only what matters to them.

>>> dets = make_detections([(10, 10, 50, 40)], labels=["car"])
>>> track = make_track(track_id=3, xyxy=(0, 0, 10, 10), stationary_since_ts=100.0)
>>> tracks = make_tracks([track], ts=160.0)
"""

from __future__ import annotations

from collections.abc import Sequence

from curbwatch.edge.messages import Detections, Track, Tracks

BoxLike = Sequence[float]

# A COCO-like vocabulary holding every class the rules and zone files name.
CLASS_NAMES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "bus",
    "truck",
    "umbrella",
    "chair",
    "dining table",
)


def make_detections(
    xyxy: Sequence[BoxLike] = (),
    scores: Sequence[float] | float = 0.9,
    labels: Sequence[str] | str = "car",
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> Detections:
    """Detections from boxes; one score or label applies to every box."""
    count = len(xyxy)
    score_list = [float(scores)] * count if isinstance(scores, float | int) else [float(s) for s in scores]
    label_list = [labels] * count if isinstance(labels, str) else list(labels)
    boxes = [tuple(float(v) for v in box) for box in xyxy]
    return Detections.from_labels(boxes, score_list, label_list, class_names)  # type: ignore[arg-type]


def make_track(
    track_id: int = 1,
    xyxy: BoxLike = (100.0, 100.0, 200.0, 160.0),
    label: str = "car",
    score: float = 0.9,
    first_seen_ts: float = 0.0,
    last_seen_ts: float | None = None,
    stationary_since_ts: float | None = None,
    matched: bool = True,
) -> Track:
    """One track; ``last_seen_ts`` defaults to ``first_seen_ts``."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return Track(
        track_id=track_id,
        label=label,
        score=score,
        xyxy=(x1, y1, x2, y2),
        first_seen_ts=first_seen_ts,
        last_seen_ts=first_seen_ts if last_seen_ts is None else last_seen_ts,
        stationary_since_ts=stationary_since_ts,
        matched=matched,
    )


def make_tracks(
    items: Sequence[Track | BoxLike] = (),
    ts: float = 0.0,
    frame_wh: tuple[int, int] = (1920, 1080),
    inferred: bool = True,
) -> Tracks:
    """Tracks at ``ts``; bare boxes become car tracks numbered from 1 in order."""
    tracks = tuple(
        item if isinstance(item, Track) else make_track(track_id=i + 1, xyxy=item, first_seen_ts=ts)
        for i, item in enumerate(items)
    )
    return Tracks(ts=ts, frame_wh=frame_wh, items=tracks, inferred=inferred)
