"""Evidence images for violation events: clean frame, annotated frame and object crops.

For each event the writer stores, under ``<root>/<camera>/<YYYY-MM-DD>/<episode_id>/`` (UTC date of
the event):

- ``<ts-ms>-<type>-clean.jpg``: the frame as received (privacy masks already applied upstream).
  It shows faces and plates, so its reference is ``restricted``.
- ``<ts-ms>-<type>-annotated.jpg``: zone outline, boxes, labels and dwell, faces blurred.
- ``<ts-ms>-<type>-crop-<track_id>.jpg``: one per involved object, faces blurred.

Every image is referenced by the sha256 of its exact JPEG bytes; derivatives name the clean
frame's sha256 in ``derived_from``. Files are written to a temporary name and renamed, and a
failure removes whatever this call already wrote, so a reader never sees half an evidence set.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curbwatch.edge.messages import Detections, EpisodeEvent, Frame, Track, Tracks
from curbwatch.schema.events import EvidenceRefV1, EvidenceRole
from curbwatch.schema.zones import EventCodeEntry

logger = logging.getLogger(__name__)

PERSON_LABEL = "person"
_INVOLVED_BGR = (0, 69, 255)
_OTHER_BGR = (170, 170, 170)
_ZONE_BGR = (0, 215, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class EvidenceError(OSError):
    """Evidence for an event could not be written; nothing of it was left behind."""


class EvidenceConfig(BaseModel):
    """Where and how evidence images are stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path = Field(title="Evidence root", description="Directory the evidence store lives in.")
    jpeg_quality: int = Field(
        default=90, ge=50, le=100, title="JPEG quality",
        description="Higher keeps plates and small objects legible at the cost of disk and upload size.",
    )  # fmt: skip
    crop_padding: float = Field(
        default=0.15, ge=0, le=2, title="Crop padding",
        description="Context added around each object crop, as a share of the box size per side.",
    )  # fmt: skip
    max_crops: int = Field(
        default=6, ge=0, le=64, title="Maximum crops",
        description="At most this many object crops per event (the event's objects in order).",
    )  # fmt: skip
    head_fraction: float = Field(
        default=0.33, gt=0, le=1, title="Head fraction",
        description="Top share of every person box that is blurred as the head.",
    )  # fmt: skip
    face_cascade: Path | None = Field(
        default=None, title="Face cascade",
        description="OpenCV Haar cascade XML for faces outside person boxes; default: OpenCV's bundled "
        "frontal-face cascade where the installed OpenCV ships it, else none.",
    )  # fmt: skip


@dataclass(frozen=True)
class _Image:
    role: EvidenceRole
    suffix: str
    image: np.ndarray
    track_id: int | None = None


def format_duration(seconds: float) -> str:
    """``5m12s``, ``1h03m``, ``42s``: compact dwell for labels."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only; drop the rest (e.g. the Chinese half of a code name).
    return " ".join("".join(ch for ch in text if 32 <= ord(ch) < 127).split())


def _default_cascade() -> Path | None:
    if not hasattr(cv2, "CascadeClassifier"):
        return None
    data = getattr(cv2, "data", None)
    folder = getattr(data, "haarcascades", None)
    if not folder:
        return None
    path = Path(folder) / "haarcascade_frontalface_default.xml"
    return path if path.is_file() else None


class FaceBlurrer:
    """Blurs heads of person boxes and, where a Haar cascade is available, faces it finds.

    There is no face model on the edge, so the head of every person box (the top ``head_fraction``,
    widened a little) is pixelated and blurred; that covers faces whether the person faces the
    camera or not. The cascade adds faces with no person box (behind glass, cut off by the frame).

    Args:
        head_fraction: Top share of a person box taken as the head.
        cascade: Haar cascade XML, or None for none.
    """

    def __init__(self, head_fraction: float = 0.33, cascade: Path | None = None) -> None:
        self._head_fraction = head_fraction
        self._cascade: cv2.CascadeClassifier | None = None
        if cascade is not None:
            if not hasattr(cv2, "CascadeClassifier"):
                # OpenCV 5 moved the Haar cascades out of the main package.
                raise EvidenceError(f"face cascade {cascade} given, but this OpenCV has no CascadeClassifier")
            classifier = cv2.CascadeClassifier(str(cascade))
            if classifier.empty():
                raise EvidenceError(f"face cascade {cascade} could not be loaded")
            self._cascade = classifier
        else:
            logger.info("no face cascade available; blurring the heads of person boxes only")

    def regions(self, image: np.ndarray, tracks: tuple[Track, ...]) -> list[tuple[int, int, int, int]]:
        """Regions to blur (x1, y1, x2, y2), clamped to the image."""
        height, width = image.shape[:2]
        boxes: list[tuple[float, float, float, float]] = []
        for track in tracks:
            if track.label != PERSON_LABEL:
                continue
            x1, y1, x2, y2 = track.xyxy
            bw, bh = x2 - x1, y2 - y1
            boxes.append((x1 - 0.1 * bw, y1 - 0.05 * bh, x2 + 0.1 * bw, y1 + self._head_fraction * bh))
        if self._cascade is not None:
            grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            for fx, fy, fw, fh in self._cascade.detectMultiScale(grey, 1.1, 5, minSize=(16, 16)):
                boxes.append((fx - 0.2 * fw, fy - 0.2 * fh, fx + 1.2 * fw, fy + 1.2 * fh))
        clamped = []
        for x1, y1, x2, y2 in boxes:
            cx1, cy1 = int(max(0, np.floor(x1))), int(max(0, np.floor(y1)))
            cx2, cy2 = int(min(width, np.ceil(x2))), int(min(height, np.ceil(y2)))
            if cx2 > cx1 and cy2 > cy1:
                clamped.append((cx1, cy1, cx2, cy2))
        return clamped

    def blur(self, image: np.ndarray, tracks: tuple[Track, ...]) -> np.ndarray:
        """A copy of ``image`` with every head and face region made unrecognisable."""
        out = image.copy()
        for x1, y1, x2, y2 in self.regions(image, tracks):
            region = out[y1:y2, x1:x2]
            h, w = region.shape[:2]
            # Pixelate to about 6 blocks across, then blur the block edges away.
            small = cv2.resize(region, (max(1, w // max(2, w // 6)), max(1, h // max(2, h // 6))),
                               interpolation=cv2.INTER_AREA)  # fmt: skip
            coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
            sigma = max(2.0, min(w, h) / 4)
            out[y1:y2, x1:x2] = cv2.GaussianBlur(coarse, (0, 0), sigma)
        return out


class EvidenceWriter:
    """Writes the evidence images of one event and returns their references.

    Args:
        config: Store location, JPEG quality, crops and face blurring.

    Example:
        >>> writer = EvidenceWriter(EvidenceConfig(root=Path("/srv/evidence")))  # doctest: +SKIP
        >>> refs = writer.write(frame, event, zone_polygon_px, tracks)  # doctest: +SKIP
    """

    def __init__(self, config: EvidenceConfig) -> None:
        self.config = config
        self._faces = FaceBlurrer(config.head_fraction, config.face_cascade or _default_cascade())

    def write(
        self,
        frame: Frame,
        event: EpisodeEvent,
        zone_polygon_px: np.ndarray,
        tracks: Tracks,
        *,
        event_code: EventCodeEntry | None = None,
    ) -> list[EvidenceRefV1]:
        """Store clean, annotated and crop images for ``event``; raise ``EvidenceError`` on failure.

        Args:
            frame: The frame of the event, privacy masks applied.
            event: The event; its objects get red boxes, labels and crops.
            zone_polygon_px: (N, 2) zone polygon in frame pixels.
            tracks: All tracks of the frame; the ones not involved get thin grey boxes.
            event_code: The city code and name to print at the top, when known.
        """
        everyone = tuple({t.track_id: t for t in (*tracks.items, *event.objects)}.values())
        blurred = self._faces.blur(frame.image, everyone)
        annotated = annotate(blurred, event, zone_polygon_px, tracks, event_code)
        images = [_Image(EvidenceRole.CLEAN, "clean", frame.image),
                  _Image(EvidenceRole.ANNOTATED, "annotated", annotated)]  # fmt: skip
        for track in event.objects[: self.config.max_crops]:
            crop = self._crop(blurred, track.xyxy)
            if crop is not None:
                images.append(_Image(EvidenceRole.CROP, f"crop-{track.track_id}", crop, track.track_id))
        folder = Path(frame.camera_id) / _day(event.ts) / event.episode_id
        stem = f"{round(event.ts * 1000)}-{event.type.value}"
        return self._store(folder, stem, images)

    def write_snapshot(self, frame: Frame, people: tuple[Track, ...], name: str) -> EvidenceRefV1:
        """Store one shareable image of ``frame`` (privacy masks applied): heads and faces blurred.

        For images asked of the camera outside any event (a check); stored under
        ``<camera>/<YYYY-MM-DD>/snapshots/<ts-ms>-<name>.jpg``.

        Args:
            frame: The frame, privacy masks applied.
            people: Person boxes in it, whose heads are blurred (faces the cascade finds are too).
            name: Distinguishes the file (e.g. the command's correlation id).
        """
        blurred = _Image(EvidenceRole.ANNOTATED, name, self._faces.blur(frame.image, people))
        folder = Path(frame.camera_id) / _day(frame.ts) / "snapshots"
        return self._store(folder, str(round(frame.ts * 1000)), [blurred])[0]

    def _crop(self, image: np.ndarray, xyxy: tuple[float, float, float, float]) -> np.ndarray | None:
        height, width = image.shape[:2]
        x1, y1, x2, y2 = xyxy
        pad_x, pad_y = (x2 - x1) * self.config.crop_padding, (y2 - y1) * self.config.crop_padding
        cx1, cy1 = int(max(0, np.floor(x1 - pad_x))), int(max(0, np.floor(y1 - pad_y)))
        cx2, cy2 = int(min(width, np.ceil(x2 + pad_x))), int(min(height, np.ceil(y2 + pad_y)))
        if cx2 - cx1 < 2 or cy2 - cy1 < 2:
            logger.warning("object box %s lies outside the %dx%d frame; no crop", xyxy, width, height)
            return None
        return image[cy1:cy2, cx1:cx2]

    def _encode(self, image: np.ndarray) -> bytes:
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise EvidenceError(f"JPEG encoding failed for a {image.shape} image")
        return buffer.tobytes()

    def _store(self, folder: Path, stem: str, images: list[_Image]) -> list[EvidenceRefV1]:
        root = self.config.root
        written: list[Path] = []
        refs: list[EvidenceRefV1] = []
        clean_sha: str | None = None
        try:
            (root / folder).mkdir(parents=True, exist_ok=True)
            for item in images:
                data = self._encode(item.image)
                digest = hashlib.sha256(data).hexdigest()
                relative = folder / f"{stem}-{item.suffix}.jpg"
                atomic_write(root / relative, data)
                written.append(root / relative)
                clean = item.role is EvidenceRole.CLEAN
                clean_sha = digest if clean else clean_sha
                refs.append(EvidenceRefV1(
                    role=item.role, sha256=digest, size_bytes=len(data), width=item.image.shape[1],
                    height=item.image.shape[0], path=relative.as_posix(), track_id=item.track_id,
                    derived_from=None if clean else clean_sha, restricted=clean,
                ))  # fmt: skip
        except OSError as exc:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise EvidenceError(f"could not write evidence under {root / folder}: {exc}") from exc
        return refs


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the whole file or none of it."""
    # Same-directory temp file + rename: readers see the whole file or none of it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def annotate(
    image: np.ndarray,
    event: EpisodeEvent,
    zone_polygon_px: np.ndarray,
    tracks: Tracks,
    event_code: EventCodeEntry | None = None,
) -> np.ndarray:
    """A copy of ``image`` with the zone, the boxes and the event's header drawn on it."""
    out = image.copy()
    height, width = out.shape[:2]
    scale = max(0.4, width / 1800)
    thick = max(1, round(width / 900))
    polygon = np.round(np.asarray(zone_polygon_px, np.float64).reshape(-1, 2)).astype(np.int32)
    fill = np.zeros((height, width), np.uint8)
    cv2.fillPoly(fill, [polygon], 1)
    inside = fill.astype(bool)
    tinted = cv2.addWeighted(out, 0.75, np.full_like(out, _ZONE_BGR), 0.25, 0)
    out[inside] = tinted[inside]
    cv2.polylines(out, [polygon], True, _ZONE_BGR, thick + 1, cv2.LINE_AA)
    involved = {t.track_id for t in event.objects}
    for track in tracks.items:
        if track.track_id not in involved:
            x1, y1, x2, y2 = (round(v) for v in track.xyxy)
            cv2.rectangle(out, (x1, y1), (x2, y2), _OTHER_BGR, 1)
    for track in event.objects:
        dwell = track.stationary_s(event.ts) if track.is_stationary else event.dwell_s
        _box(out, track, f"{track.label} {track.score:.2f} | {format_duration(dwell)}", scale, thick)
    _header(out, event, event_code, scale, thick)
    return out


def _box(out: np.ndarray, track: Track, label: str, scale: float, thick: int) -> None:
    x1, y1, x2, y2 = (round(v) for v in track.xyxy)
    cv2.rectangle(out, (x1, y1), (x2, y2), _INVOLVED_BGR, thick + 1)
    (tw, th), base = cv2.getTextSize(label, _FONT, scale, thick)
    top = y1 - th - base - 4 if y1 - th - base - 4 >= 0 else y2
    cv2.rectangle(out, (x1, top), (x1 + tw + 6, top + th + base + 4), _INVOLVED_BGR, -1)
    cv2.putText(out, label, (x1 + 3, top + th + 2), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)


def _header(
    out: np.ndarray, event: EpisodeEvent, code: EventCodeEntry | None, scale: float, thick: int
) -> None:
    title = event.violation.value.replace("_", " ").upper()
    if code is not None:
        title = f"{title}  [{code.code}] {_ascii(code.name)}".rstrip()
    when = datetime.fromtimestamp(event.ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    detail = f"zone {event.zone} | {event.type.value} | dwell {format_duration(event.dwell_s)} | {when}"
    if event.state_score is not None:
        detail += f" | score {event.state_score:.2f}"
    (_, th), base = cv2.getTextSize(title, _FONT, scale * 1.1, thick)
    bar = 2 * (th + base) + 16
    band = out[:bar]
    band[:] = (band * 0.35).astype(np.uint8)
    cv2.putText(out, title, (8, th + 6), _FONT, scale * 1.1, (255, 255, 255), thick, cv2.LINE_AA)
    cv2.putText(out, detail, (8, 2 * th + base + 12), _FONT, scale, (210, 235, 255), thick, cv2.LINE_AA)


def people_in(detections: Detections, ts: float) -> tuple[Track, ...]:
    """The person detections, as the boxes the face blurrer takes."""
    return tuple(
        Track(
            track_id=n,
            label=label,
            score=float(score),
            xyxy=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            first_seen_ts=ts,
            last_seen_ts=ts,
            stationary_since_ts=None,
            matched=True,
        )
        for n, (label, score, box) in enumerate(
            zip(detections.labels, detections.scores, detections.xyxy, strict=True)
        )
        if label == PERSON_LABEL
    )
