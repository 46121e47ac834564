"""Generated street frames and a server database with operator verdicts on them.

Frames are flat scenes with simple drawn objects (a blue car with a dark window band, a green
motorcycle with two wheels, a red person with a round head) on a textured road, so a tiny detector
can start to learn them in an epoch or two. Each case is stored the way the server stores it:
evidence bytes in the content-addressed store, event rows, a case folded from the events, then the
operator's verdict applied through ``transition_case``.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.events import EventV1, example_event_document
from curbwatch.server.cases.folding import FoldingConfig, fold_event
from curbwatch.server.cases.service import transition_case
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.devices import add_device
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.tables import Event

CLASSES = ("car", "motorcycle", "person")
FRAME_WH = (320, 240)
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
CONFIG = CaseServerConfig()
FOLDING = FoldingConfig(attach_within_s=0)  # every episode its own case

Box = tuple[float, float, float, float]
Objects = list[tuple[str, Box]]


def background(camera_seed: int, frame_seed: int, size_wh: tuple[int, int] = FRAME_WH) -> np.ndarray:
    """A camera's road (its own texture and kerb line) with per-frame sensor noise."""
    width, height = size_wh
    rng = np.random.default_rng(camera_seed)
    base = cv2.resize(rng.integers(70, 150, (6, 8, 3), dtype=np.uint8), (width, height), cv2.INTER_CUBIC)
    kerb = int(height * rng.uniform(0.35, 0.6))
    cv2.line(base, (0, kerb), (width, kerb + int(rng.integers(-20, 20))), (200, 200, 200), 3)
    noise = np.random.default_rng(frame_seed).normal(0, 6, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def draw(image: np.ndarray, label: str, box: Box) -> None:
    x1, y1, x2, y2 = (round(v) for v in box)
    if label == "car":
        cv2.rectangle(image, (x1, y1), (x2, y2), (200, 70, 20), -1)
        cv2.rectangle(
            image, (x1 + (x2 - x1) // 5, y1 + 3), (x2 - (x2 - x1) // 5, y1 + (y2 - y1) // 3), (40, 30, 30), -1
        )
    elif label == "motorcycle":
        cv2.rectangle(image, (x1, y1), (x2, y1 + (y2 - y1) // 2), (30, 170, 40), -1)
        radius = max((y2 - y1) // 4, 2)
        for cx in (x1 + radius, x2 - radius):
            cv2.circle(image, (cx, y2 - radius), radius, (20, 20, 20), -1)
    else:
        head = max((x2 - x1) // 2, 2)
        cv2.circle(image, ((x1 + x2) // 2, y1 + head), head, (120, 160, 230), -1)
        cv2.rectangle(image, (x1, y1 + 2 * head), (x2, y2), (40, 40, 210), -1)


SIZES = {"car": ((70, 110), (35, 50)), "motorcycle": ((34, 46), (26, 34)), "person": ((14, 20), (45, 70))}


def scene(rng: np.random.Generator, camera_seed: int, labels: list[str]) -> tuple[np.ndarray, Objects]:
    """A frame with the given objects at random places that do not overlap much."""
    image = background(camera_seed, int(rng.integers(1 << 30)))
    objects: Objects = []
    for label in labels:
        (w_lo, w_hi), (h_lo, h_hi) = SIZES[label]
        for _ in range(20):
            w, h = int(rng.integers(w_lo, w_hi)), int(rng.integers(h_lo, h_hi))
            x, y = int(rng.integers(0, FRAME_WH[0] - w)), int(rng.integers(0, FRAME_WH[1] - h))
            box = (float(x), float(y), float(x + w), float(y + h))
            if all(_overlap(box, other) < 0.1 for _, other in objects):
                break
        draw(image, label, box)
        objects.append((label, box))
    return image, objects


def _overlap(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


@dataclass
class Frame:
    """One clean evidence frame of an event and the objects the edge reported on it."""

    data: bytes
    objects: Objects
    size_wh: tuple[int, int] = FRAME_WH

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class VerdictDb:
    """Writes cases with verdicts into a migrated server database and its evidence store."""

    session_factory: sessionmaker[Session]
    evidence_dir: Path
    device_id: str = field(default_factory=lambda: f"edge-{uuid.uuid4().hex[:10]}")
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.store = EvidenceStore(self.evidence_dir)
        with self.session_factory() as session, session.begin():
            add_device(session, self.device_id, now=T0)

    def case(
        self,
        camera_id: str,
        start: datetime,
        frames: list[Frame],
        verdict: str | None,
        *,
        step_s: float = 30.0,
        end_reason: str = "left",
        **event: Any,
    ) -> str:
        """Store one episode (one event per frame), fold it into a case and apply the verdict.

        Args:
            camera_id: Camera of the episode.
            start: Time of the first event.
            frames: One clean frame per event, in order.
            verdict: 'confirm', a reject reason, or None to leave the case awaiting verification.
            step_s: Seconds between events.
            end_reason: Why the episode's last event ended it.
            event: Event fields to set on every event (a bin-site case: rule, violation, zone...).
        """
        episode_id = uuid.uuid4().hex
        events = []
        for index, frame in enumerate(frames):
            self.store.put(frame.sha256, frame.data)
            ts = start + timedelta(seconds=step_s * index)
            kind = "start" if index == 0 else ("end" if index == len(frames) - 1 else "update")
            document = example_event_document(
                device_id=self.device_id,
                camera_id=camera_id,
                episode_id=episode_id,
                type=kind,
                episode_start=start.isoformat(),
                ts=ts.isoformat(),
                dwell_s=step_s * index,
                frame_wh=list(frame.size_wh),
                end_reason=end_reason if kind == "end" else None,
                objects=[
                    {"track_id": n, "label": label, "score": 0.8, "xyxy": list(box), "stationary_s": 60.0}
                    for n, (label, box) in enumerate(frame.objects)
                ],
                evidence=[
                    {
                        "role": "clean",
                        "sha256": frame.sha256,
                        "size_bytes": len(frame.data),
                        "width": frame.size_wh[0],
                        "height": frame.size_wh[1],
                        "path": f"{frame.sha256}.jpg",
                        "restricted": True,
                    }
                ],
                **event,
            )
            events.append(EventV1.model_validate(document))
        with self.session_factory() as session, session.begin():
            for event in events:
                session.add(
                    Event(
                        event_id=event.event_id,
                        device_id=self.device_id,
                        seq=next(self._seq),
                        episode_id=event.episode_id,
                        type=event.type.value,
                        rule=event.rule.value,
                        violation=event.violation.value,
                        event_code=event.event_code,
                        camera=event.camera_id,
                        zone=event.zone,
                        ts=event.ts,
                        received_at=event.ts,
                        document=event.model_dump(mode="json", by_alias=True),
                    )
                )
            session.flush()
            case_id = ""
            for event in events:
                case_id = fold_event(session, event, config=FOLDING, at=event.ts).id
        if verdict is not None:
            with self.session_factory() as session, session.begin():
                action, reason = ("confirm", None) if verdict == "confirm" else ("reject", verdict)
                transition_case(
                    session,
                    case_id=case_id,
                    action=action,
                    actor="op-1",
                    role="operator",
                    reason=reason,
                    config=CONFIG,
                    at=events[-1].ts + timedelta(minutes=5),
                )
        return case_id


def street_cases(
    db: VerdictDb, *, cameras: int = 4, cases_per_camera: int = 5, seed: int = 0, frames_per_case: int = 2
) -> list[str]:
    """A mixed set of verified cases: mostly confirmed, some rejected for each reason.

    Each case is one episode on a camera, an hour apart, with ``frames_per_case`` distinct frames;
    the last case of every camera is rejected as a false detection (its boxes lie on an empty road)
    and one case is left unverified.
    """
    rng = np.random.default_rng(seed)
    verdicts = ["confirm", "not_a_violation", "confirm", "permitted", "confirm", "duplicate"]
    case_ids = []
    for cam in range(cameras):
        for n in range(cases_per_camera):
            verdict = "false_detection" if n == cases_per_camera - 1 else verdicts[(cam + n) % len(verdicts)]
            frames = []
            for _ in range(frames_per_case):
                labels = list(rng.choice(CLASSES, size=int(rng.integers(1, 4))))
                image, objects = scene(rng, camera_seed=cam, labels=labels)
                if verdict == "false_detection":
                    # The edge reported objects on an empty road.
                    image = background(cam, int(rng.integers(1 << 30)))
                frames.append(Frame(jpeg(image), objects))
            start = T0 + timedelta(hours=n, minutes=7 * cam)
            case_ids.append(db.case(f"cam-{cam}", start, frames, verdict))
    image, objects = scene(rng, camera_seed=0, labels=["car"])
    db.case("cam-0", T0 + timedelta(days=1), [Frame(jpeg(image), objects)], None)
    return case_ids
