"""Detection log ``curbwatch.detlog.v1``: one JSON line per frame.

``curbwatch edge run --record`` writes it and ``curbwatch replay`` reads it, so rules and zones
can be tuned offline and tested on thousands of generated situations.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DETLOG_SCHEMA = "curbwatch.detlog.v1"


class LoggedDetection(BaseModel):
    """One detection as the detector reported it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1)
    score: float = Field(ge=0, le=1)
    xyxy: tuple[float, float, float, float] = Field(description="Box in pixels: x1, y1, x2, y2.")

    @model_validator(mode="after")
    def verify_box(self) -> LoggedDetection:
        x1, y1, x2, y2 = self.xyxy
        if x2 < x1 or y2 < y1:
            raise ValueError(f"box {self.xyxy} has x2 < x1 or y2 < y1")
        return self


class LoggedFrame(BaseModel):
    """One frame of a detection log."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["curbwatch.detlog.v1"] = Field(default=DETLOG_SCHEMA, alias="schema")
    camera: str | None = Field(
        default=None, description="Camera id; replay takes it from the zone file if absent."
    )
    ts: float = Field(description="Frame timestamp, seconds since the Unix epoch.")
    frame_wh: tuple[int, int]
    inferred: bool = Field(
        default=True,
        description="False when the detector skipped this frame (motion gating): no evidence of absence.",
    )
    detections: list[LoggedDetection] = Field(default_factory=list)


class DetlogError(ValueError):
    """A detection log line is malformed."""


def read_detlog(stream: TextIO, source: str = "<detlog>") -> Iterator[LoggedFrame]:
    """Yield frames in order; raise :class:`DetlogError` naming the line of the first bad one."""
    previous_ts: float | None = None
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            frame = LoggedFrame.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise DetlogError(f"{source}:{number}: {where}: {first['msg']}") from exc
        if previous_ts is not None and frame.ts < previous_ts:
            raise DetlogError(
                f"{source}:{number}: timestamp {frame.ts} goes back in time (previous {previous_ts})"
            )
        previous_ts = frame.ts
        yield frame


def write_frame(stream: TextIO, frame: LoggedFrame) -> None:
    stream.write(frame.model_dump_json(by_alias=True) + "\n")


def open_detlog(path: Path | str) -> Iterator[LoggedFrame]:
    with Path(path).open(encoding="utf-8") as stream:
        yield from read_detlog(stream, str(path))
