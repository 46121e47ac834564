"""ZoneSet: membership by anchor, schedules in the zone's time zone, scaling, privacy masks."""

from __future__ import annotations

from contextlib import nullcontext as DoesNotRaise
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, Polygon

from curbwatch.edge.zones import ZoneError, ZoneSet
from curbwatch.schema.zones import ZoneFile
from tests.factories import make_track, make_tracks

CURB = [[100, 600], [900, 600], [900, 1000], [100, 1000]]


def zone_file(
    *zones: dict[str, Any], frame_wh: tuple[int, int] = (1920, 1080), tz: str = "Asia/Shanghai"
) -> ZoneFile:
    return ZoneFile.model_validate(
        {"version": 1, "camera": "cam-01", "frame_wh": frame_wh, "timezone": tz, "zones": list(zones)}
    )


def utc_ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


WEEKDAYS_7_19 = [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "07:00", "end": "19:00"}]
FRIDAY_NIGHT = [{"days": ["fri"], "start": "18:00", "end": "02:00"}]
SUNDAY_NIGHT = [{"days": ["sun"], "start": "18:00", "end": "02:00"}]
EARLY = [{"start": "07:00", "end": "08:00"}]


@pytest.mark.parametrize(
    ("schedule", "zone_tz", "utc", "active"),
    [
        ([], None, "2024-06-01T03:00:00", True),  # no schedule: always
        # Asia/Shanghai is UTC+8 all year. 2024-06-03 is a Monday.
        (WEEKDAYS_7_19, None, "2024-06-03T00:00:00", True),  # Mon 08:00
        (WEEKDAYS_7_19, None, "2024-06-02T22:59:00", False),  # Mon 06:59
        (WEEKDAYS_7_19, None, "2024-06-03T11:00:00", False),  # Mon 19:00, end is exclusive
        (WEEKDAYS_7_19, None, "2024-06-01T00:00:00", False),  # Sat 08:00
        # Overnight window starting Friday 18:00, ending Saturday 02:00.
        (FRIDAY_NIGHT, None, "2024-06-07T15:00:00", True),  # Fri 23:00
        (FRIDAY_NIGHT, None, "2024-06-07T17:30:00", True),  # Sat 01:30
        (FRIDAY_NIGHT, None, "2024-06-07T18:00:00", False),  # Sat 02:00
        (FRIDAY_NIGHT, None, "2024-06-08T10:30:00", False),  # Sat 18:30: the window starts on Fridays only
        (FRIDAY_NIGHT, None, "2024-06-06T15:00:00", False),  # Thu 23:00
        # Across the week boundary: Sunday night runs into Monday.
        (SUNDAY_NIGHT, None, "2024-06-02T16:00:00", True),  # Mon 00:00
        (SUNDAY_NIGHT, None, "2024-06-02T17:59:00", True),  # Mon 01:59
        (SUNDAY_NIGHT, None, "2024-06-01T17:00:00", False),  # Sun 01:00 (Saturday's night)
        # The zone's own time zone wins over the file's: 09:30 in London is 16:30 in Shanghai.
        (WEEKDAYS_7_19, "Europe/London", "2024-06-03T06:30:00", True),  # London 07:30 BST
        (WEEKDAYS_7_19, "Europe/London", "2024-06-03T05:30:00", False),  # London 06:30, Shanghai 13:30
        # Europe/Berlin springs forward on 2024-03-31 (CET+1 -> CEST+2) and falls back on 2024-10-27.
        (EARLY, "Europe/Berlin", "2024-03-30T06:30:00", True),  # 07:30 CET
        (EARLY, "Europe/Berlin", "2024-03-31T06:30:00", False),  # 08:30 CEST
        (EARLY, "Europe/Berlin", "2024-03-31T05:30:00", True),  # 07:30 CEST
        (EARLY, "Europe/Berlin", "2024-10-27T05:30:00", False),  # 06:30 CET
        (EARLY, "Europe/Berlin", "2024-10-27T06:30:00", True),  # 07:30 CET
    ],
)
def test_schedule_in_force(
    schedule: list[dict[str, Any]], zone_tz: str | None, utc: str, active: bool
) -> None:
    zones = ZoneSet(
        zone_file(
            {"name": "curb", "kind": "no_parking", "polygon": CURB, "schedule": schedule, "timezone": zone_tz}
        ),
        (1920, 1080),
    )
    ts = utc_ts(utc)
    assert zones.is_active("curb", ts) is active
    assert ("curb" in zones.test(make_tracks(ts=ts)).active) is active


def test_zones_drawn_at_1080p_work_on_a_720p_stream() -> None:
    right_half = [[960, 540], [1920, 540], [1920, 1080], [960, 1080]]
    zones = ZoneSet(zone_file({"name": "curb", "kind": "no_parking", "polygon": right_half}), (1280, 720))
    expected = np.array([[640, 360], [1280, 360], [1280, 720], [640, 720]], np.float32)
    np.testing.assert_allclose(zones.polygon_px("curb"), expected)
    assert zones.polygon_px("curb").dtype == np.float32
    inside = make_track(track_id=1, xyxy=(600, 600, 700, 700))  # anchor (650, 700)
    outside = make_track(track_id=2, xyxy=(500, 600, 630, 700))  # anchor (565, 700): inside at 1080p scale
    hits = zones.test(make_tracks([inside, outside], frame_wh=(1280, 720)))
    assert hits.inside("curb") == (1,)


def test_membership_uses_the_bottom_centre_of_each_box() -> None:
    zones = ZoneSet(
        zone_file(
            {"name": "curb", "kind": "no_parking", "polygon": CURB},
            {
                "name": "stall",
                "kind": "no_vending",
                "polygon": [[1000, 600], [1400, 600], [1400, 900], [1000, 900]],
            },
        ),
        (1920, 1080),
    )
    tracks = make_tracks(
        [
            make_track(track_id=1, xyxy=(200, 400, 400, 700)),  # box mostly above the curb, wheels on it
            make_track(track_id=2, xyxy=(200, 300, 400, 590)),  # box overlaps nothing on the ground
            make_track(track_id=3, xyxy=(850, 500, 1100, 800)),  # anchor x=975: between the zones
            make_track(track_id=4, xyxy=(1100, 500, 1300, 900)),  # anchor on the stall's bottom edge
        ]
    )
    hits = zones.test(tracks)
    assert hits.inside("curb") == (1,)
    assert hits.inside("stall") == (4,)
    assert zones.anchor_in("curb", (100.0, 800.0))  # on the border counts
    assert not zones.anchor_in("curb", (99.0, 800.0))


def test_empty_tracks_give_every_zone_no_members() -> None:
    zones = ZoneSet(zone_file({"name": "curb", "kind": "no_parking", "polygon": CURB}), (1920, 1080))
    hits = zones.test(make_tracks())
    assert dict(hits.members) == {"curb": ()}


def test_zone_lookup_by_kind_and_name() -> None:
    zones = ZoneSet(
        zone_file(
            {"name": "curb", "kind": "no_parking", "polygon": CURB},
            {"name": "market", "kind": "permitted_vending", "polygon": CURB},
            {"name": "bins", "kind": "bin_site", "polygon": CURB},
            {"name": "window", "kind": "privacy_mask", "polygon": [[0, 0], [10, 0], [10, 10]]},
        ),
        (1920, 1080),
    )
    assert [zone.name for zone in zones.rule_zones()] == ["curb", "bins"]
    assert [zone.name for zone in zones.permitted_vending_zones()] == ["market"]
    assert zones.zone("bins").kind == "bin_site"


@pytest.mark.parametrize(
    ("call", "expectation"),
    [
        (lambda z: z.zone("curb"), DoesNotRaise()),
        (lambda z: z.zone("nowhere"), pytest.raises(ZoneError, match="no zone 'nowhere'")),
        (lambda z: z.is_active("nowhere", 0.0), pytest.raises(ZoneError)),
        (lambda z: z.polygon_px("nowhere"), pytest.raises(ZoneError)),
        (lambda z: z.anchor_in("nowhere", (1, 1)), pytest.raises(ZoneError)),
        (lambda z: z.test(make_tracks(frame_wh=(1280, 720))), pytest.raises(ZoneError, match="frame")),
        (lambda z: ZoneSet(z.zone_file, (0, 720)), pytest.raises(ZoneError, match="positive")),
    ],
)
def test_bad_lookups_raise_zone_error(call: Any, expectation: Any) -> None:
    zones = ZoneSet(zone_file({"name": "curb", "kind": "no_parking", "polygon": CURB}), (1920, 1080))
    with expectation:
        call(zones)


@pytest.mark.parametrize("image_wh", [(1920, 1080), (1280, 720), (640, 360)])
def test_privacy_masks_black_out_exactly_the_polygon(image_wh: tuple[int, int]) -> None:
    triangle = [[300, 100], [1500, 250], [700, 900]]
    zones = ZoneSet(
        zone_file(
            {"name": "curb", "kind": "no_parking", "polygon": CURB},
            {"name": "flat", "kind": "privacy_mask", "polygon": triangle},
        ),
        image_wh,
    )
    image = np.random.default_rng(0).integers(1, 256, (image_wh[1], image_wh[0], 3), np.uint8)
    masked = zones.apply_privacy_masks(image)
    assert masked is not image and image.min() > 0  # the input is untouched
    shape = Polygon(zones.polygon_px("flat"))
    ys, xs = np.mgrid[0 : image_wh[1], 0 : image_wh[0]]
    black = (masked == 0).all(axis=2)
    # Pixels (centres at integer coordinates, as in OpenCV) more than a pixel inside are black,
    # more than a pixel outside are unchanged.
    deep_inside = shapely.contains_xy(shape.buffer(-1.0), xs, ys)
    far_outside = ~shapely.contains_xy(shape.buffer(1.0), xs, ys)
    assert black[deep_inside].all()
    assert (masked[far_outside] == image[far_outside]).all()
    assert abs(black.sum() - shape.area) <= shape.length  # nothing else, up to the border pixels


def test_no_masks_returns_the_same_image() -> None:
    zones = ZoneSet(zone_file({"name": "curb", "kind": "no_parking", "polygon": CURB}), (1920, 1080))
    image = np.ones((1080, 1920, 3), np.uint8)
    assert zones.apply_privacy_masks(image) is image


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    corners=st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 1000)), min_size=3, max_size=3),
    weights=st.tuples(st.floats(0.05, 1), st.floats(0.05, 1), st.floats(0.05, 1)),
    shift=st.tuples(st.floats(0, 2000), st.floats(0, 2000)),
)
def test_point_inside_stays_inside_when_both_are_translated(
    corners: list[tuple[float, float]], weights: tuple[float, float, float], shift: tuple[float, float]
) -> None:
    triangle = Polygon(corners)
    if triangle.area < 100 or triangle.minimum_clearance < 5:
        return  # degenerate triangles are rejected by the schema anyway
    total = sum(weights)
    point = tuple(sum(w * c[i] for w, c in zip(weights, corners, strict=True)) / total for i in (0, 1))
    moved = [(x + shift[0], y + shift[1]) for x, y in corners]
    here = ZoneSet(
        zone_file({"name": "z", "kind": "no_parking", "polygon": corners}, frame_wh=(3000, 3000)),
        (3000, 3000),
    )
    there = ZoneSet(
        zone_file({"name": "z", "kind": "no_parking", "polygon": moved}, frame_wh=(3000, 3000)), (3000, 3000)
    )
    assert triangle.contains(Point(point))
    assert here.anchor_in("z", point)
    assert there.anchor_in("z", (point[0] + shift[0], point[1] + shift[1]))
