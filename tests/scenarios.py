"""Generated street situations as detection logs, with exact ground truth.

Each actor moves on a piecewise-linear path through frame time; the generator samples it at a
frame rate and adds the noise real detectors show: box jitter, missed detections, occlusion
gaps (which make a tracker lose an object and, without re-identification, give it a new id),
car/truck label flips and score noise. The truth is the list of violation episodes a perfect
system would report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from curbwatch.schema.detlog import LoggedDetection, LoggedFrame
from curbwatch.schema.zones import Violation, ZoneFile

FRAME_WH = (1280, 720)
TZ = ZoneInfo("Asia/Shanghai")
# A Wednesday morning, inside the no-parking hours of the scenario zone file.
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=TZ).timestamp()

# Kerb band (no parking 07:00-19:00), pavement (no vending) and a licensed night-market corner.
ZONE_FILE_DATA = {
    "version": 1,
    "camera": "scn",
    "frame_wh": list(FRAME_WH),
    "timezone": "Asia/Shanghai",
    "zones": [
        {
            "name": "kerb",
            "kind": "no_parking",
            "polygon": [[0, 380], [1280, 380], [1280, 470], [0, 470]],
            "min_dwell_s": 120,
            "schedule": [{"start": "07:00", "end": "19:00"}],
        },
        {
            "name": "pavement",
            "kind": "no_vending",
            "polygon": [[0, 520], [1280, 520], [1280, 720], [0, 720]],
            "min_dwell_s": 90,
        },
        {
            "name": "market",
            "kind": "permitted_vending",
            "polygon": [[900, 520], [1280, 520], [1280, 720], [900, 720]],
            "schedule": [{"start": "18:00", "end": "22:00"}],
        },
    ],
}

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Waypoint:
    t: float  # seconds after T0
    box: Box


@dataclass
class Actor:
    """One object: a path of waypoints (linear in between) and the label it is detected as."""

    label: str
    path: list[Waypoint]
    occlusions: list[tuple[float, float]] = field(default_factory=list)  # (from, to) seconds after T0
    flip_label: str | None = None  # a second label the detector sometimes gives (car <-> truck)

    def box_at(self, t: float) -> Box | None:
        if t < self.path[0].t or t > self.path[-1].t:
            return None
        if any(start <= t < end for start, end in self.occlusions):
            return None
        for a, b in zip(self.path, self.path[1:], strict=False):
            if a.t <= t <= b.t:
                w = 0.0 if b.t == a.t else (t - a.t) / (b.t - a.t)
                return tuple(pa + w * (pb - pa) for pa, pb in zip(a.box, b.box, strict=True))  # type: ignore[return-value]
        return self.path[-1].box


@dataclass(frozen=True)
class TrueEpisode:
    zone: str
    violation: Violation
    begin_t: float  # seconds after T0 when the condition began
    end_t: float  # seconds after T0 when it stopped


@dataclass
class Scenario:
    name: str
    actors: list[Actor]
    truth: list[TrueEpisode]
    duration_s: float
    start_ts: float = T0


def shift(box: Box, dx: float) -> Box:
    return box[0] + dx, box[1], box[2] + dx, box[3]


def car_box(x: float, y_bottom: float = 440.0, width: float = 200.0, height: float = 90.0) -> Box:
    return x, y_bottom - height, x + width, y_bottom


def parked_car(
    arrive: float,
    leave: float,
    x: float,
    label: str = "car",
    drive_s: float = 4.0,
    occlusions: list[tuple[float, float]] | None = None,
) -> Actor:
    """Drives in from the left, parks at ``x`` from ``arrive`` to ``leave``, drives off to the right."""
    parked = car_box(x, width=90 if label in ("motorcycle", "bicycle") else 200)
    return Actor(
        label=label,
        path=[
            Waypoint(arrive - drive_s, shift(parked, -400)),
            Waypoint(arrive, parked),
            Waypoint(leave, parked),
            Waypoint(leave + drive_s, shift(parked, 500)),
        ],
        occlusions=occlusions or [],
        flip_label="truck" if label == "car" else None,
    )


def passing_car(start: float, seconds: float = 6.0, y_bottom: float = 440.0) -> Actor:
    box = car_box(-200, y_bottom)
    return Actor(
        "car", [Waypoint(start, box), Waypoint(start + seconds, shift(box, 1480))], flip_label="truck"
    )


def stall(arrive: float, leave: float, x: float, with_vendor: bool = True) -> list[Actor]:
    """Umbrella and table standing still; a vendor who moves about near them."""
    actors = [
        Actor(
            "umbrella", [Waypoint(arrive, (x, 470, x + 160, 600)), Waypoint(leave, (x, 470, x + 160, 600))]
        ),
        Actor(
            "dining table",
            [Waypoint(arrive, (x + 20, 580, x + 150, 650)), Waypoint(leave, (x + 20, 580, x + 150, 650))],
        ),
    ]
    if with_vendor:
        steps, t, path = 0, arrive, []
        while t <= leave:
            dx = 60.0 * np.sin(steps)  # shuffles left and right of the stall
            path.append(Waypoint(t, (x + 150 + dx, 500, x + 210 + dx, 690)))
            steps, t = steps + 1, t + 15.0
        actors.append(Actor("person", path))
    return actors


def walker(start: float, seconds: float = 20.0) -> Actor:
    box = (-60.0, 540.0, 0.0, 700.0)
    return Actor("person", [Waypoint(start, box), Waypoint(start + seconds, shift(box, 1340))])


@dataclass(frozen=True)
class Noise:
    jitter: float = 0.02  # box jitter, fraction of box size (1 sigma)
    miss_rate: float = 0.2  # share of frames an object is missed
    flip_rate: float = 0.1  # share of detections that take the flip label
    score_range: tuple[float, float] = (0.45, 0.95)


def render(
    scenario: Scenario, fps: float = 5.0, noise: Noise = Noise(), seed: int = 0, skip_every: int = 0
) -> list[LoggedFrame]:
    """Sample the scenario into detection-log frames.

    ``skip_every`` > 0 marks all frames but every n-th as not inferred, as motion gating would.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(int(scenario.duration_s * fps)):
        t = index / fps
        inferred = skip_every <= 0 or index % skip_every == 0
        detections = []
        for actor in scenario.actors if inferred else []:
            box = actor.box_at(t)
            if box is None or rng.random() < noise.miss_rate:
                continue
            w, h = box[2] - box[0], box[3] - box[1]
            jitter = rng.normal(0.0, noise.jitter, 4) * np.array([w, h, w, h])
            x1, y1, x2, y2 = np.array(box) + jitter
            x1, x2 = np.clip([x1, x2], 0, FRAME_WH[0])
            y1, y2 = np.clip([y1, y2], 0, FRAME_WH[1])
            if x2 - x1 < 4 or y2 - y1 < 4:
                continue
            label = actor.flip_label if actor.flip_label and rng.random() < noise.flip_rate else actor.label
            detections.append(
                LoggedDetection(
                    label=label,
                    score=round(float(rng.uniform(*noise.score_range)), 3),
                    xyxy=(float(x1), float(y1), float(x2), float(y2)),
                )
            )
        frames.append(
            LoggedFrame(
                camera="scn",
                ts=scenario.start_ts + t,
                frame_wh=FRAME_WH,
                inferred=inferred,
                detections=detections,
            )
        )
    return frames


def zone_file() -> ZoneFile:
    return ZoneFile.model_validate(ZONE_FILE_DATA)
