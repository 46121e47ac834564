"""Actors with timed scripts, and the seeded scenario that plans a whole scene.

An actor is one tracked object: a sprite, a class label, a size in metres and a path of
keyframes (linear in between); it is in the scene only between its first and last keyframe.
The scenario also records every *stay*: an object (or a stall) standing in a rule zone from one
moment to another. A stay at least as long as the zone's dwell is a violation episode; a shorter
one (a brief stop) is not. Script times are planned for a two-minute scene and scaled to the
requested length, so every situation fits; passing traffic and pedestrians keep real speeds.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from curbwatch.edge.synth import layout
from curbwatch.edge.synth.layout import Camera, Dwells
from curbwatch.schema.zones import Violation

REFERENCE_S = 120.0  # the scene length the script timings are planned for
CAR_COLOURS = ((40, 40, 170), (180, 180, 185), (30, 30, 30), (150, 90, 30), (235, 235, 235), (60, 140, 200))
CLOTHES = ((60, 60, 160), (140, 80, 40), (40, 120, 60), (90, 90, 90), (30, 160, 200), (120, 40, 120))

# Sprite name -> (class label, size: length along the street, depth, height; metres).
SPRITES: dict[str, tuple[str, tuple[float, float, float]]] = {
    "car": ("car", (4.4, 1.8, 1.5)),
    "van": ("truck", (5.2, 2.0, 2.2)),
    "scooter": ("motorcycle", (1.8, 0.6, 1.1)),
    "bicycle": ("bicycle", (1.7, 0.5, 1.0)),
    "person": ("person", (0.5, 0.4, 1.7)),
    "table": ("dining table", (1.3, 0.7, 0.8)),
    "umbrella": ("umbrella", (2.2, 2.2, 2.4)),
    "bin": ("bin", (0.7, 0.7, 1.1)),
}

CLASSES = tuple(dict.fromkeys(label for label, _ in SPRITES.values()))


@dataclass(frozen=True)
class Key:
    """Where an actor's centre stands on the ground at time ``t`` (seconds from the first frame)."""

    t: float
    x: float
    z: float


@dataclass(frozen=True)
class Actor:
    """One tracked object and its timed path.

    Attributes:
        track_id: Ground-truth track id, unique in the scene.
        sprite: How it is drawn (a key of ``SPRITES``).
        color: Main BGR colour.
        keys: Path keyframes in time order; the actor exists from the first to the last.
        fill: Bin only: (t, level) keyframes; a level above 1 means overflowing.
    """

    track_id: int
    sprite: str
    color: tuple[int, int, int]
    keys: tuple[Key, ...]
    fill: tuple[tuple[float, float], ...] = ()

    @property
    def label(self) -> str:
        return SPRITES[self.sprite][0]

    @property
    def size(self) -> tuple[float, float, float]:
        return SPRITES[self.sprite][1]

    def pose(self, t: float) -> tuple[float, float] | None:
        """Ground position (x, z) at ``t``, or None when the actor is not in the scene."""
        keys = self.keys
        if t < keys[0].t or t > keys[-1].t:
            return None
        index = bisect_right([key.t for key in keys], t)
        if index >= len(keys):
            return keys[-1].x, keys[-1].z
        a, b = keys[index - 1], keys[index]
        w = (t - a.t) / (b.t - a.t) if b.t > a.t else 1.0
        return a.x + w * (b.x - a.x), a.z + w * (b.z - a.z)

    def fill_at(self, t: float) -> float:
        if not self.fill:
            return 0.0
        times = [k[0] for k in self.fill]
        return float(np.interp(t, times, [k[1] for k in self.fill]))


@dataclass(frozen=True)
class Stay:
    """An object (or a stall's objects) standing in a rule zone from ``start_t`` to ``end_t``."""

    what: str
    violation: Violation
    zone: str
    start_t: float
    end_t: float
    track_ids: tuple[int, ...]


@dataclass(frozen=True)
class Lighting:
    """Seeded light script: slow drift, one passing cloud, a turning sun."""

    drift: float  # amplitude of the slow brightness drift
    phase: float
    cloud_t: float  # when the cloud is thickest
    cloud_s: float  # how long it takes to pass
    sun_from: float  # shadow direction at the start, radians on the ground plane
    sun_to: float


@dataclass(frozen=True)
class Scenario:
    """Everything a render needs: the actors, the truth of their stays, the zone dwells and the light."""

    seed: int
    seconds: float
    fps: float
    actors: tuple[Actor, ...]
    stays: tuple[Stay, ...]
    dwells: Dwells
    lighting: Lighting

    @property
    def frame_count(self) -> int:
        return round(self.seconds * self.fps)

    def dwell_of(self, zone: str) -> float:
        return {
            "kerb": self.dwells.kerb,
            "hatch": self.dwells.hatch,
            "pavement": self.dwells.vending,
            "bin-site": self.dwells.bin_site,
        }[zone]


@dataclass
class _Planner:
    rng: np.random.Generator
    k: float  # script time scale
    end_t: float  # time of the last frame
    actors: list[Actor] = field(default_factory=list)
    stays: list[Stay] = field(default_factory=list)
    busy_near_lane: list[tuple[float, float]] = field(default_factory=list)

    def add(self, sprite: str, keys: list[Key], color: tuple[int, int, int] | None = None, **extra) -> int:
        track_id = len(self.actors) + 1
        if color is None:
            palette = CLOTHES if sprite == "person" else CAR_COLOURS
            color = palette[int(self.rng.integers(len(palette)))]
        self.actors.append(Actor(track_id, sprite, color, tuple(keys), **extra))
        return track_id

    def jitter(self, t: float, spread: float = 2.0) -> float:
        return t * self.k + float(self.rng.uniform(-spread, spread)) * self.k

    def kerb_stop(self, what: str, violation: Violation, arrive: float, leave: float, x: float) -> None:
        """A car drives in along the near lane, pulls in to the kerb at ``x``, waits, drives off."""
        lane, kerb = layout.NEAR_LANE_Z, layout.PARKING_LANE_Z
        keys = [
            Key(arrive - 4.0, -15.0, lane),
            Key(arrive - 1.5, x - 4.0, lane),
            Key(arrive - 0.5, x - 0.8, kerb),
            Key(arrive, x, kerb),
            Key(leave, x, kerb),
            Key(leave + 1.0, x + 1.0, kerb),
            Key(leave + 2.0, x + 4.0, lane),
            Key(leave + 4.0, x + 20.0, lane),
        ]
        track_id = self.add("car", keys)
        self.busy_near_lane += [(arrive - 4.0, arrive), (leave, leave + 4.0)]
        self.stays.append(Stay(what, violation, "kerb", arrive, min(leave, self.end_t), (track_id,)))

    def traffic(self, lane_z: float, direction: int, mean_gap_s: float) -> None:
        """Passing cars at real speeds; the near lane leaves room for the cars that pull in."""
        reach = Camera(layout.REF_WH).visible_half_width(lane_z) + 4.0
        t = float(self.rng.uniform(-3.0, mean_gap_s))
        while t < self.end_t:
            speed = float(self.rng.uniform(7.0, 11.0))
            span = 2 * reach / speed
            clash = any(t - 2.0 < end and t + span + 2.0 > start for start, end in self.busy_near_lane)
            if direction < 0 or not clash:
                sprite = "van" if self.rng.random() < 0.15 else "car"
                keys = [Key(t, -direction * reach, lane_z), Key(t + span, direction * reach, lane_z)]
                self.add(sprite, keys)
            t += max(2.5, float(self.rng.exponential(mean_gap_s)))

    def stall(self, arrive: float, leave: float) -> None:
        """A vendor walks in, sets up a table with goods and an umbrella, sells, packs up, leaves."""
        x, z = layout.STALL_X, 7.9
        # Setting up and packing take a few seconds, less in a very short scene.
        step = min(1.0, (leave - arrive) / 8.0)
        keys = [Key(arrive - 5.0, -9.0, 7.3), Key(arrive, x + 1.1, 7.3)]
        t = arrive
        while t + 3.0 < leave:
            t += 3.0
            keys.append(Key(t, x + 1.1 + float(self.rng.uniform(-0.35, 0.35)), 7.3))
        keys += [Key(leave + 4.0 * step, x + 0.9, 7.3), Key(leave + 4.0 * step + 5.0, -9.0, 7.3)]
        vendor = self.add("person", keys)
        table = self.add(
            "table", [Key(arrive + 1.5 * step, x, z), Key(leave + 2.5 * step, x, z)], color=(40, 80, 120)
        )
        umbrella_on = arrive + 3.0 * step
        umbrella = self.add(
            "umbrella", [Key(umbrella_on, x, z + 0.1), Key(leave, x, z + 0.1)], color=(30, 30, 200)
        )
        self.stays.append(
            Stay(
                "vending stall",
                Violation.UNLICENSED_VENDING,
                "pavement",
                umbrella_on,
                leave,
                (vendor, table, umbrella),
            )
        )

    def two_wheelers(self) -> None:
        """A bicycle stands in the bike bay; one scooter parks on the hatched strip, another in the bay."""
        self.add("bicycle", [Key(-1.0, -1.6, 8.3), Key(self.end_t + 1.0, -1.6, 8.3)], color=(30, 120, 30))
        parked = self.jitter(6.0)
        x = -4.6 + float(self.rng.uniform(-0.3, 0.3))
        scooter = self.add(
            "scooter",
            [
                Key(parked - 3.0, -12.0, 10.3),
                Key(parked - 1.0, -7.0, 8.4),
                Key(parked, x, 7.9),
                Key(self.end_t + 1.0, x, 7.9),
            ],
        )
        self.stays.append(
            Stay(
                "scooter on the hatched strip",
                Violation.ILLEGAL_PARKING_TWO_WHEELER,
                "hatch",
                parked,
                self.end_t,
                (scooter,),
            )
        )
        bay = self.jitter(45.0)
        self.add(
            "scooter",
            [
                Key(bay - 3.0, -12.0, 10.3),
                Key(bay - 1.2, -7.0, 8.4),
                Key(bay, -1.4, 7.6),
                Key(self.end_t + 1.0, -1.4, 7.6),
            ],
        )

    def bin(self, overflow: float) -> None:
        """The bin fills slowly, then rubbish piles up around it until the end of the scene."""
        start_level = float(self.rng.uniform(0.1, 0.3))
        fill = (
            (0.0, start_level),
            (overflow - 8.0 * self.k, 0.9),
            (overflow, 1.0),
            (overflow + 20.0 * self.k, 2.0),
            (self.end_t + 1.0, 2.0),
        )
        keys = [Key(-1.0, layout.BIN_X, layout.BIN_Z), Key(self.end_t + 1.0, layout.BIN_X, layout.BIN_Z)]
        track_id = self.add("bin", keys, color=(40, 110, 40), fill=fill)
        self.stays.append(
            Stay("overflowing bin", Violation.BIN_OVERFLOW, "bin-site", overflow, self.end_t, (track_id,))
        )

    def walkers(self, count: int) -> None:
        for _ in range(count):
            start = float(self.rng.uniform(-5.0, self.end_t))
            z = (
                float(self.rng.uniform(6.9, 7.2))
                if self.rng.random() < 0.5
                else float(self.rng.uniform(8.4, 8.7))
            )
            direction = 1 if self.rng.random() < 0.5 else -1
            span = 18.0 / float(self.rng.uniform(1.1, 1.6))
            self.add("person", [Key(start, -9.0 * direction, z), Key(start + span, 9.0 * direction, z)])


def plan_scenario(seconds: float = REFERENCE_S, seed: int = 0, fps: float = 5.0) -> Scenario:
    """Plan a seeded scene of ``seconds``: every situation of the two-minute script, scaled to fit.

    The default two minutes hold an illegally parked car (longer than the kerb's dwell), a brief
    stop (shorter), passing traffic both ways, a vending stall, an overflowing bin, a scooter
    parked on the hatched strip, two-wheelers in the bike bay and pedestrians.
    """
    if seconds <= 0 or fps <= 0:
        raise ValueError("seconds and fps must be positive")
    rng = np.random.default_rng(seed)
    k = seconds / REFERENCE_S
    end_t = (round(seconds * fps) - 1) / fps
    dwells = Dwells(
        kerb=round(30.0 * k, 1),
        hatch=round(30.0 * k, 1),
        vending=round(30.0 * k, 1),
        bin_site=round(20.0 * k, 1),
    )
    plan = _Planner(rng, k, end_t)
    plan.kerb_stop(
        "parked car",
        Violation.ILLEGAL_PARKING,
        plan.jitter(12.0),
        plan.jitter(75.0),
        x=-3.4 + float(rng.uniform(-0.5, 0.5)),
    )
    brief = plan.jitter(88.0)
    plan.kerb_stop(
        "brief stop",
        Violation.ILLEGAL_PARKING,
        brief,
        brief + dwells.kerb * float(rng.uniform(0.25, 0.5)),
        x=3.2 + float(rng.uniform(-0.5, 0.5)),
    )
    plan.stall(plan.jitter(22.0), plan.jitter(82.0))
    plan.two_wheelers()
    plan.bin(plan.jitter(62.0))
    plan.traffic(layout.NEAR_LANE_Z, +1, mean_gap_s=8.0)
    plan.traffic(layout.FAR_LANE_Z, -1, mean_gap_s=7.0)
    plan.walkers(max(1, round(4 * k)))
    lighting = Lighting(
        drift=float(rng.uniform(0.04, 0.08)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        cloud_t=float(rng.uniform(0.3, 0.7)) * seconds,
        cloud_s=max(4.0, 20.0 * k),
        sun_from=float(rng.uniform(-0.9, -0.5)),
        sun_to=float(rng.uniform(-0.3, 0.1)),
    )
    return Scenario(seed, seconds, fps, tuple(plan.actors), tuple(plan.stays), dwells, lighting)
