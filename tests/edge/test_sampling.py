"""Labelling samples: the uncertain band and filters, quotas and cooldown on frame time (replays,
variable frame rates, streams that jump back), the stored image (privacy masks, blurred heads), the
sidecar, the pipeline's wiring and the outbox's handling of samples."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from curbwatch.edge.config import EdgeConfig
from curbwatch.edge.events import EventBuilder
from curbwatch.edge.evidence import EvidenceConfig, EvidenceWriter
from curbwatch.edge.messages import Detections, Frame, Tracks
from curbwatch.edge.outbox import ItemKind, Outbox, OutboxConfig, OutboxError, OutboxSink, PutResult
from curbwatch.edge.pipeline import CameraPipeline, PipelineParts
from curbwatch.edge.sampling import CameraSampling, SamplingConfig, UncertaintySampler, sample_id
from curbwatch.edge.zones import ZoneSet
from curbwatch.schema.events import EventV1, ModelRefV1, example_event_document
from curbwatch.schema.protocol import EnvelopeV1, SampleV1, verify
from curbwatch.schema.zones import ZoneFile
from tests.factories import make_detections, make_tracks

KERB = [[250, 250], [550, 250], [550, 350], [250, 350]]
MASK = [[0, 0], [160, 0], [160, 120], [0, 120]]
CAR_IN_KERB = (300.0, 200.0, 500.0, 300.0)  # ground point (400, 300): inside the kerb zone
CAR_OUTSIDE = (20.0, 380.0, 120.0, 460.0)
PERSON = (400.0, 20.0, 460.0, 200.0)
KEY = bytes(range(32))
MODEL = ModelRefV1(name="yolox-nano", version="1", sha256="ab" * 32, family="yolox")


def zone_file(*, mask: bool = False) -> ZoneFile:
    zones = [{"name": "kerb", "kind": "no_parking", "polygon": KERB, "min_dwell_s": 600}]
    if mask:
        zones.append({"name": "window", "kind": "privacy_mask", "polygon": MASK})
    return ZoneFile.model_validate(
        {"version": 1, "camera": "cam", "frame_wh": [640, 480], "timezone": "UTC", "zones": zones}
    )


ZONES = ZoneSet(zone_file(), (640, 480))


def config(**changes: object) -> SamplingConfig:
    base = {"enabled": True, "per_minute": 1000, "per_hour": 1000, "per_day": 1000, "cooldown_s": 0}
    return SamplingConfig.model_validate({**base, **changes})


def uncertain_car() -> Detections:
    return make_detections([CAR_IN_KERB], scores=0.4, labels="car")


def sampled_times(sampler: UncertaintySampler, times: list[float]) -> list[float]:
    detections = uncertain_car()
    return [ts for ts in times if sampler.offer(ts, detections, ZONES) is not None]


# -- configuration --


def test_sampling_is_off_by_default_and_validated() -> None:
    assert SamplingConfig().enabled is False
    assert "sampling" in EdgeConfig.model_fields
    for bad, message in [
        ({"score_min": 0.5, "score_max": 0.5}, "below score_max"),
        ({"per_minute": 5, "per_hour": 4}, "per_minute <= per_hour <= per_day"),
        ({"classes": []}, "empty list"),
        ({"per_day": 0}, "greater than or equal to 1"),
        ({"cooldown_s": -1}, "greater than or equal to 0"),
    ]:
        with pytest.raises(ValidationError, match=message):
            SamplingConfig.model_validate(bad)


# -- band and filters --


def test_only_scores_inside_the_band_are_uncertain() -> None:
    sampler = UncertaintySampler(config(score_min=0.25, score_max=0.5, classes="all"))
    boxes = [CAR_IN_KERB] * 5
    detections = make_detections(boxes, scores=[0.2, 0.25, 0.49, 0.5, 0.9], labels="car")
    decision = sampler.offer(100.0, detections, ZONES)
    assert decision is not None and decision.uncertain == (1, 2)
    sure = make_detections([CAR_IN_KERB, CAR_IN_KERB], scores=[0.1, 0.95], labels="car")
    assert sampler.offer(200.0, sure, ZONES) is None
    assert sampler.offer(300.0, make_detections([]), ZONES) is None


@pytest.mark.parametrize(
    ("classes", "expected"),
    [("rules", (0,)), ("all", (0, 1)), (["umbrella"], (1,)), (["bus"], None)],
)
def test_class_filter(classes: object, expected: tuple[int, ...] | None) -> None:
    detections = make_detections([CAR_IN_KERB, CAR_IN_KERB], scores=0.3, labels=["car", "umbrella"])
    decision = UncertaintySampler(config(classes=classes)).offer(10.0, detections, ZONES)
    assert (decision.uncertain if decision else None) == expected


def test_rule_classes_come_from_the_zone_kinds() -> None:
    vending = ZoneFile.model_validate({
        "version": 1, "camera": "cam", "frame_wh": [640, 480], "timezone": "UTC",
        "zones": [{"name": "square", "kind": "no_vending", "polygon": KERB, "min_dwell_s": 60}],
    })  # fmt: skip
    zones = ZoneSet(vending, (640, 480))
    detections = make_detections([CAR_IN_KERB, CAR_IN_KERB], scores=0.3, labels=["car", "umbrella"])
    decision = UncertaintySampler(config()).offer(10.0, detections, zones)
    assert decision is not None and decision.uncertain == (1,)


def test_in_zones_only_ignores_boxes_outside_rule_zones() -> None:
    outside = make_detections([CAR_OUTSIDE], scores=0.3, labels="car")
    assert UncertaintySampler(config(in_zones_only=True)).offer(1.0, outside, ZONES) is None
    assert UncertaintySampler(config(in_zones_only=False)).offer(1.0, outside, ZONES) is not None
    both = make_detections([CAR_OUTSIDE, CAR_IN_KERB], scores=0.3, labels="car")
    decision = UncertaintySampler(config(in_zones_only=True)).offer(1.0, both, ZONES)
    assert decision is not None and decision.uncertain == (1,)


# -- quotas and cooldown on frame time --

T0 = 1_780_000_000.0


def test_minute_quota_slides_on_frame_time() -> None:
    sampler = UncertaintySampler(config(per_minute=2))
    times = [T0 + s for s in range(0, 130)]  # 1 fps for 130 s
    assert sampled_times(sampler, times) == [T0, T0 + 1, T0 + 60, T0 + 61, T0 + 120, T0 + 121]


def test_hour_and_day_quotas() -> None:
    hourly = UncertaintySampler(config(per_minute=1, per_hour=3))
    every_10_min = [T0 + 600 * n for n in range(13)]  # two hours and a frame
    first_hour, second_hour = [T0, T0 + 600, T0 + 1200], [T0 + 3600, T0 + 4200, T0 + 4800]
    # At 7200 s the hour back to 3600 s (exclusive) holds two samples: room for a third.
    assert sampled_times(hourly, every_10_min) == [*first_hour, *second_hour, T0 + 7200]
    daily = UncertaintySampler(config(per_minute=1, per_hour=2, per_day=3))
    every_20_min = [T0 + 1200 * n for n in range(int(86400 / 1200) + 4)]
    # Day one: 0, 20 min, then the hour quota waits until 60 min; the third fills the day.
    # At 86400 s the day back to 0 s (exclusive) holds two; at 90000 s the day has lost 3600 s.
    day_one, day_two = [T0, T0 + 1200, T0 + 3600], [T0 + 86400, T0 + 87600, T0 + 90000]
    assert sampled_times(daily, every_20_min) == [*day_one, *day_two]


def test_cooldown_keeps_a_parked_car_from_filling_the_quota() -> None:
    sampler = UncertaintySampler(config(per_minute=5, per_hour=20, cooldown_s=300))
    times = [T0 + n / 5 for n in range(5 * 3600)]  # an hour at 5 fps of the same unsure car
    taken = sampled_times(sampler, times)
    assert len(taken) == 12
    assert np.diff(taken).min() >= 300
    assert sampler.stats.sampled == 12 and sampler.stats.throttled == len(times) - 12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_variable_frame_rate_and_replay_speed_change_nothing(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(0.04, 3.0, 6000)  # 25 fps stretches, stalls of seconds
    times = list(T0 + np.cumsum(gaps))
    cfg = config(per_minute=1, per_hour=10, per_day=100, cooldown_s=120)
    live = sampled_times(UncertaintySampler(cfg), times)
    # A replay runs the same frame times as fast as it can: no wall clock, same picks.
    assert sampled_times(UncertaintySampler(cfg), times) == live
    assert np.diff(live).min() >= 120
    for start in live:
        in_hour = [t for t in live if start <= t < start + 3600]
        assert len(in_hour) <= 10
    # Steady 5 fps over the same stretch gives as many samples: quotas count time, not frames.
    steady = [T0 + n / 5 for n in range(int((times[-1] - T0) * 5))]
    assert abs(len(sampled_times(UncertaintySampler(cfg), steady)) - len(live)) <= 1


def test_a_stream_that_jumps_back_starts_a_new_timeline_with_the_same_ids() -> None:
    sampler = UncertaintySampler(config(per_minute=1, cooldown_s=30))
    first_pass = sampled_times(sampler, [T0 + s for s in range(0, 120, 10)])
    second_pass = sampled_times(sampler, [T0 + s for s in range(0, 120, 10)])  # the file loops
    assert first_pass == second_pass == [T0, T0 + 60]
    ids = {sample_id("edge", "cam", ts) for ts in first_pass + second_pass}
    assert len(ids) == 2  # the server files the looped frames once


# -- the stored sample --


def test_sample_document_names_device_camera_time_model_and_detections(tmp_path: Path) -> None:
    stage, sink = sampling_stage(tmp_path)
    frame = Frame("cam", T0 + 0.5, np.full((480, 640, 3), 120, np.uint8), 7)
    detections = make_detections([CAR_IN_KERB, CAR_OUTSIDE], scores=[0.4, 0.9], labels="car")
    sample = stage.offer(frame, detections, tracks_of(frame), ZONES)
    assert sample is not None and sink.samples == [(sample, tmp_path / sample.image.path)]
    assert (sample.device_id, sample.camera_id, sample.ts.timestamp()) == ("edge", "cam", T0 + 0.5)
    assert sample.model == MODEL and sample.reason == "uncertain" and sample.score_band == (0.25, 0.5)
    assert [(d.label, d.score, d.xyxy, d.uncertain) for d in sample.detections] == [
        ("car", 0.4, CAR_IN_KERB, True),
        ("car", 0.9, CAR_OUTSIDE, False),
    ]
    image = tmp_path / sample.image.path
    assert hashlib.sha256(image.read_bytes()).hexdigest() == sample.image.sha256
    assert not sample.image.restricted
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert SampleV1.model_validate(sidecar) == sample


def test_the_saved_image_has_its_privacy_masks_and_heads_blurred(tmp_path: Path) -> None:
    zones = zone_file(mask=True)
    stage, sink = sampling_stage(tmp_path)
    rng = np.random.default_rng(3)
    image = rng.integers(40, 255, (480, 640, 3), dtype=np.uint8)  # texture that blurring destroys

    def detect(_image: np.ndarray) -> Detections:
        return make_detections([CAR_IN_KERB, PERSON], scores=[0.4, 0.3], labels=["car", "person"])

    pipeline = CameraPipeline(
        zones, detect, EventBuilder("edge", zones, model=None), PipelineParts(), sampling=stage
    )
    pipeline.process(Frame("cam", T0, image, 0))
    assert len(sink.samples) == 1
    sample, path = sink.samples[0]
    saved = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    masked = saved[0:96, 0:144]  # inside the mask, clear of JPEG ringing at its border
    assert masked.mean() < 2 and masked.max() <= 16
    head = (slice(25, 70), slice(405, 455))  # top third of the person box
    body = (slice(120, 190), slice(405, 455))
    # Same texture in both; the JPEG softens it, the head blur wipes it out.
    assert saved[head].std() < 0.3 * saved[body].std()
    assert saved[body].std() > 0.5 * image[body].std()
    assert {d.label for d in sample.detections} == {"car", "person"}


def test_pipeline_does_not_sample_frames_the_gate_skipped_or_when_off(tmp_path: Path) -> None:
    zones = zone_file()
    stage, sink = sampling_stage(tmp_path, cooldown_s=0)
    pipeline = CameraPipeline(
        zones, lambda _i: uncertain_car(), EventBuilder("edge", zones, model=None), PipelineParts(),
        sampling=stage,
    )  # fmt: skip
    base = np.full((480, 640, 3), 90, np.uint8)
    for index in range(10):
        pipeline.process(Frame("cam", T0 + index, base, index))
    # Only frames the detector ran on are offered (a still scene is gated).
    assert len(sink.samples) == pipeline.stats.inferred_frames >= 1


def test_a_failed_store_skips_the_sample(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("not a folder")
    stage, sink = sampling_stage(root)
    frame = Frame("cam", T0, np.zeros((480, 640, 3), np.uint8), 0)
    assert stage.offer(frame, uncertain_car(), tracks_of(frame), ZONES) is None
    assert sink.samples == []


class RecordingSink:
    def __init__(self) -> None:
        self.samples: list[tuple[SampleV1, Path]] = []

    def emit_sample(self, sample: SampleV1, image: Path) -> None:
        self.samples.append((sample, image))


def sampling_stage(root: Path, **changes: object) -> tuple[CameraSampling, RecordingSink]:
    sink = RecordingSink()
    writer = EvidenceWriter(EvidenceConfig(root=root))
    return CameraSampling(config(**changes), writer, "edge", lambda: MODEL, sink), sink


def tracks_of(frame: Frame) -> Tracks:
    return make_tracks([], ts=frame.ts, frame_wh=frame.resolution_wh)


# -- the outbox --


def queued_sample(tmp_path: Path, size: int = 3000) -> tuple[SampleV1, Path]:
    stage, sink = sampling_stage(tmp_path / "evidence")
    frame = Frame("cam", T0, np.random.default_rng(size).integers(0, 255, (480, 640, 3), np.uint8), 0)
    stage.offer(frame, uncertain_car(), tracks_of(frame), ZONES)
    return sink.samples[0]


def open_outbox(path: Path, max_bytes: int = 10**9) -> Outbox:
    return Outbox(path, OutboxConfig(max_bytes=max_bytes), device_id="edge", key=KEY)


def test_outbox_queues_the_image_then_the_signed_sample_and_acks_remove_them(tmp_path: Path) -> None:
    sample, image = queued_sample(tmp_path)
    with open_outbox(tmp_path / "outbox.db") as outbox:
        OutboxSink(outbox, tmp_path / "evidence").emit_sample(sample, image)
        evidence, queued = outbox.lease(10)
        assert (evidence.kind, evidence.ref, evidence.path) == (ItemKind.EVIDENCE, sample.image.sha256, image)
        assert (queued.kind, queued.ref, queued.seq) == (ItemKind.SAMPLE, sample.sample_id, 1)
        document = json.loads(queued.payload or b"")
        assert verify(document, KEY)
        envelope = EnvelopeV1.model_validate(document)
        assert envelope.message_id == sample.sample_id
        assert SampleV1.model_validate(envelope.payload) == sample
        assert outbox.next_seq() == 2
        assert outbox.ack("sample", sample.sample_id) == 1
        assert outbox.ack("evidence", sample.image.sha256) == 1
        assert outbox.depth() == 0


def test_outbox_refuses_samples_over_the_cap_and_drops_them_first_for_events(tmp_path: Path) -> None:
    sample, image = queued_sample(tmp_path)
    size = image.stat().st_size
    with open_outbox(tmp_path / "small.db", max_bytes=size // 2) as outbox:
        assert outbox.put_sample(sample, image) is PutResult.REFUSED
        assert outbox.depth() == 0 and outbox.next_seq() == 1
    with open_outbox(tmp_path / "room.db", max_bytes=size + 2000) as outbox:
        assert outbox.put_sample(sample, image) is PutResult.STORED
        # An event needs the room: the sample goes, image and document together.
        event_image = tmp_path / "evidence" / "event.jpg"
        event_image.write_bytes(b"x" * 1500)
        event = EventV1.model_validate(example_event_document(device_id="edge"))
        assert outbox.put_event(event, [("ab" * 32, event_image)]) is PutResult.STORED
        assert [item.kind for item in outbox.lease(10)] == [ItemKind.EVIDENCE, ItemKind.EVENT]
        assert outbox.stats.dropped_samples == 1


def test_outbox_refuses_a_foreign_or_unreadable_sample(tmp_path: Path) -> None:
    sample, image = queued_sample(tmp_path)
    with open_outbox(tmp_path / "outbox.db") as outbox:
        with pytest.raises(OutboxError, match="of device"):
            outbox.put_sample(sample.model_copy(update={"device_id": "other"}), image)
        with pytest.raises(OutboxError, match="cannot be sent"):
            outbox.put_sample(sample, tmp_path / "missing.jpg")
