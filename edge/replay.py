"""Replay a detection log through the tracker, zones and rules: violation events without video.

Operators tune zones and thresholds offline with it; the tests drive thousands of generated
situations through it. Bin sites need pixels, so they produce nothing in a replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from curbwatch.edge.events import EventBuilder
from curbwatch.edge.messages import Detections
from curbwatch.edge.pipeline import PipelineParts, SceneStages
from curbwatch.schema.detlog import LoggedFrame
from curbwatch.schema.events import EventV1
from curbwatch.schema.zones import ZoneFile


class ReplayError(ValueError):
    """The detection log does not fit the zone file."""


def replay(
    frames: Iterable[LoggedFrame],
    zone_file: ZoneFile,
    parts: PipelineParts,
    builder: EventBuilder,
    class_names: tuple[str, ...] | None = None,
) -> Iterator[EventV1]:
    """Yield the events a camera would have produced on these detections.

    Args:
        frames: Detection-log frames in time order.
        zone_file: The zones to judge them against.
        parts: Tracker and rule settings.
        builder: Event builder (device id, no model provenance).
        class_names: Vocabulary; by default the labels seen in the log, in order of appearance.
    """
    vocabulary: dict[str, int] = {name: i for i, name in enumerate(class_names or ())}
    stages: SceneStages | None = None
    last_ts: float | None = None
    for frame in frames:
        if frame.camera is not None and frame.camera != zone_file.camera:
            raise ReplayError(
                f"log frame at ts={frame.ts} is from camera {frame.camera!r}, zones are for "
                f"{zone_file.camera!r}"
            )
        if stages is None or stages.frame_wh != frame.frame_wh:
            if stages is not None and last_ts is not None:
                yield from (builder.build(ep, stages.frame_wh) for ep in stages.rules.close(last_ts))
            stages = SceneStages(zone_file, frame.frame_wh, parts)
        detections = (
            _detections(frame, vocabulary, frozen=class_names is not None) if frame.inferred else None
        )
        _, episodes = stages.advance(frame.ts, detections, None)
        yield from (builder.build(episode, stages.frame_wh) for episode in episodes)
        last_ts = frame.ts
    if stages is not None and last_ts is not None:
        yield from (builder.build(ep, stages.frame_wh) for ep in stages.rules.close(last_ts))


def _detections(frame: LoggedFrame, vocabulary: dict[str, int], frozen: bool) -> Detections:
    for detection in frame.detections:
        if detection.label not in vocabulary:
            if frozen:
                raise ReplayError(
                    f"log frame at ts={frame.ts} has label {detection.label!r} not in the class names"
                )
            vocabulary[detection.label] = len(vocabulary)
    return Detections.from_labels(
        [d.xyxy for d in frame.detections],
        [d.score for d in frame.detections],
        [d.label for d in frame.detections],
        tuple(vocabulary),
    )
