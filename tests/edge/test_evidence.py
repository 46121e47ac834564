"""Tests of the evidence writer on a real frame (Frigate's ground-plane.jpg)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from curbwatch.edge.evidence import EvidenceConfig, EvidenceError, EvidenceWriter, annotate, format_duration
from curbwatch.edge.messages import EpisodeEvent, Frame, Track, Tracks
from curbwatch.schema.events import EventType, EvidenceRefV1, EvidenceRole
from curbwatch.schema.zones import EventCodeEntry, Violation

TS = 1718000000.25
CAR = Track(4, "car", 0.87, (712.0, 433.0, 922.0, 512.0), TS - 400, TS, TS - 312, True)
PERSON = Track(9, "person", 0.91, (585.0, 458.0, 700.0, 722.0), TS - 5, TS, None, True)
EDGE_CAR = Track(5, "car", 0.6, (1100.0, 700.0, 1300.0, 800.0), TS - 400, TS, TS - 300, True)
ZONE_PX = np.array([(705, 505), (1100, 470), (1110, 525), (720, 540)], np.float32)
CODE = EventCodeEntry(code="0505", name="机动车乱停放 illegal motor-vehicle parking")


@pytest.fixture(scope="module")
def frame(data_dir: Path) -> Frame:
    return Frame("porch", TS, cv2.imread(str(data_dir / "frigate-cctv" / "ground-plane.jpg")), 0)


def make_event(*objects: Track, kind: EventType = EventType.START) -> EpisodeEvent:
    return EpisodeEvent("ab" * 16, kind, Violation.ILLEGAL_PARKING, "kerb-east", TS - 312, TS, objects)


def write(tmp_path: Path, frame: Frame, *objects: Track, **config: object) -> list[EvidenceRefV1]:
    writer = EvidenceWriter(EvidenceConfig(root=tmp_path, **config))
    tracks = Tracks(TS, frame.resolution_wh, (CAR, PERSON, EDGE_CAR), True)
    return writer.write(frame, make_event(*objects), ZONE_PX, tracks, event_code=CODE)


def decode(path: Path) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)


def test_refs_match_the_files(tmp_path: Path, frame: Frame) -> None:
    refs = write(tmp_path, frame, CAR, EDGE_CAR)
    assert [(r.role, r.track_id) for r in refs] == [
        (EvidenceRole.CLEAN, None),
        (EvidenceRole.ANNOTATED, None),
        (EvidenceRole.CROP, 4),
        (EvidenceRole.CROP, 5),
    ]
    clean = refs[0]
    for ref in refs:
        EvidenceRefV1.model_validate(ref.model_dump())
        data = (tmp_path / ref.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == ref.sha256
        assert len(data) == ref.size_bytes
        assert decode(tmp_path / ref.path).shape[:2] == (ref.height, ref.width)
        assert ref.restricted is (ref.role is EvidenceRole.CLEAN)
        assert ref.derived_from == (None if ref is clean else clean.sha256)
    assert clean.path == f"porch/2024-06-10/{'ab' * 16}/1718000000250-start-clean.jpg"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        Path(r.path).name for r in refs
    )


def test_clean_is_the_encoded_input_frame(tmp_path: Path, frame: Frame) -> None:
    before = frame.image.copy()
    [clean, *_] = write(tmp_path, frame, CAR, PERSON, jpeg_quality=85)
    ok, expected = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok and (tmp_path / clean.path).read_bytes() == expected.tobytes()
    assert np.array_equal(frame.image, before)


@pytest.mark.parametrize(("track", "padding"), [(CAR, 0.15), (CAR, 0.0), (EDGE_CAR, 0.15)])
def test_crops_cover_the_box_clamped_to_the_frame(
    tmp_path: Path, frame: Frame, track: Track, padding
) -> None:
    [_, _, crop] = write(tmp_path, frame, track, crop_padding=padding)
    x1, y1, x2, y2 = track.xyxy
    pw, ph = (x2 - x1) * padding, (y2 - y1) * padding
    width, height = frame.resolution_wh
    assert crop.width == pytest.approx(min(width, x2 + pw) - max(0, x1 - pw), abs=2)
    assert crop.height == pytest.approx(min(height, y2 + ph) - max(0, y1 - ph), abs=2)


def test_max_crops(tmp_path: Path, frame: Frame) -> None:
    refs = write(tmp_path, frame, CAR, PERSON, EDGE_CAR, max_crops=1)
    assert [r.track_id for r in refs if r.role is EvidenceRole.CROP] == [4]


def test_faces_are_blurred_and_the_rest_untouched(tmp_path: Path, frame: Frame) -> None:
    refs = write(tmp_path, frame, CAR, PERSON)
    annotated = decode(tmp_path / refs[1].path).astype(np.float32)
    person_crop = decode(tmp_path / refs[3].path).astype(np.float32)
    original = frame.image.astype(np.float32)
    head = (slice(470, 520), slice(600, 685))  # the delivery person's head and shoulders
    assert np.abs(annotated[head] - original[head]).mean() > 25
    # The blurred head has lost its detail: almost no edges left.
    assert (
        cv2.Laplacian(annotated[head], cv2.CV_32F).std()
        < 0.25 * cv2.Laplacian(original[head], cv2.CV_32F).std()
    )
    legs = (slice(600, 700), slice(610, 680))  # no drawing there: only JPEG noise
    assert np.abs(annotated[legs] - original[legs]).mean() < 3
    sky = (slice(150, 300), slice(100, 500))
    assert np.abs(annotated[sky] - original[sky]).mean() < 2
    # The person crop (padding 15 %) has the head blurred too.
    top = person_crop[int(0.15 * 264) : int(0.15 * 264) + 40, 30:110]
    assert np.abs(top - original[470:510, 600:680]).mean() > 25


def test_annotation_draws_zone_boxes_and_header(frame: Frame) -> None:
    tracks = Tracks(TS, frame.resolution_wh, (CAR, PERSON), True)
    out = annotate(frame.image, make_event(CAR), ZONE_PX, tracks, CODE)
    diff = np.abs(out.astype(np.int16) - frame.image.astype(np.int16)).sum(axis=2)
    assert diff[:40].mean() > 30  # darkened header band with text
    assert diff[500, 900] > 20  # zone tint inside the polygon
    assert diff[433, 800] > 100  # involved box edge
    assert diff[600, 585] > 0  # neutral box of the other track
    assert diff[300, 300] == 0


def test_write_failure_raises_and_leaves_nothing(tmp_path: Path, frame: Frame) -> None:
    """The crop's target name is taken by a directory: clean and annotated must be rolled back."""
    folder = tmp_path / "porch" / "2024-06-10" / ("ab" * 16)
    (folder / "1718000000250-start-crop-4.jpg").mkdir(parents=True)
    with pytest.raises(EvidenceError, match="could not write evidence"):
        write(tmp_path, frame, CAR)
    assert [p.name for p in folder.iterdir()] == ["1718000000250-start-crop-4.jpg"]


def test_unwritable_root_raises(tmp_path: Path, frame: Frame) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"x")
    with pytest.raises(EvidenceError):
        write(blocker, frame, CAR)


def test_bad_cascade_is_an_error(tmp_path: Path) -> None:
    bogus = tmp_path / "faces.xml"
    bogus.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(EvidenceError, match="cascade"):
        EvidenceWriter(EvidenceConfig(root=tmp_path, face_cascade=bogus))


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.4, "42s"), (312, "5m12s"), (3780, "1h03m")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_dir_raises_and_leaves_nothing(tmp_path: Path, frame: Frame) -> None:
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(EvidenceError):
            write(tmp_path, frame, CAR)
        assert list(tmp_path.iterdir()) == []
    finally:
        tmp_path.chmod(0o755)
