"""Zone-file loading: every mistake an operator makes is reported at its line."""

from __future__ import annotations

from contextlib import nullcontext as DoesNotRaise
from pathlib import Path
from typing import Any

import pytest

from curbwatch.schema.yamlio import ConfigError
from curbwatch.schema.zones import load_zone_file

CLASS_NAMES = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "umbrella", "chair", "dining table")

# Line numbers in the table below refer to this text (line 1 is "version: 1").
BASE = """\
version: 1
camera: cam-01
frame_wh: [1920, 1080]
timezone: Asia/Shanghai
zones:
  - name: curb-a
    kind: no_parking
    polygon: [[100, 600], [900, 600], [900, 1000], [100, 1000]]
    schedule:
      - days: [mon, tue]
        start: "07:00"
        end: "19:00"
  - name: mask-1
    kind: privacy_mask
    polygon: [[0, 0], [300, 0], [300, 200], [0, 200]]
"""


def edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def raises_at(line: int, message: str) -> Any:
    return pytest.raises(ConfigError, match=rf":{line}:\d+: .*{message}")


@pytest.mark.parametrize(
    ("text", "class_names", "expectation"),
    [
        (BASE, CLASS_NAMES, DoesNotRaise()),
        (BASE, None, DoesNotRaise()),
        # A bow-tie whose crossing is not at the polygon's centre.
        (
            edited("[900, 600], [900, 1000], [100, 1000]", "[900, 1000], [900, 600], [100, 900]"),
            None,
            raises_at(8, "polygon is not simple"),
        ),
        (
            edited("    kind: no_parking\n", "    kind: no_parking\n    vehicle_classes: [car, tank]\n"),
            CLASS_NAMES,
            raises_at(8, "classes the model does not know: tank"),
        ),
        (  # without the model's vocabulary, class names are not checked
            edited("    kind: no_parking\n", "    kind: no_parking\n    vehicle_classes: [car, tank]\n"),
            None,
            DoesNotRaise(),
        ),
        (edited("[mon, tue]", "[mon, tuesday]"), None, raises_at(10, "Input should be 'mon'")),
        (edited("[mon, tue]", "[mon, mon]"), None, raises_at(10, "a day is listed twice")),
        (edited('end: "19:00"', 'end: "25:00"'), None, raises_at(12, "hour value is outside")),
        (edited('end: "19:00"', 'end: "7:75"'), None, raises_at(12, "time")),
        (edited('end: "19:00"', 'end: "07:00"'), None, raises_at(10, "start and end are equal")),
        (edited('end: "19:00"', "end: 18:00"), None, DoesNotRaise()),  # YAML 1.1 sexagesimal, undone
        (edited("kind: privacy_mask", "kind: no_loitering"), None, raises_at(13, "does not match any")),
        (
            edited("[300, 200], [0, 200]", "[3000, 200], [0, 200]"),
            None,
            raises_at(15, "leaves the 1920x1080"),
        ),
        (edited("name: mask-1", "name: curb-a"), None, raises_at(13, "curb-a is repeated")),
        (
            edited("timezone: Asia/Shanghai", "timezone: Mars/Olympus"),
            None,
            raises_at(4, "unknown time zone"),
        ),
        (
            edited("    kind: no_parking\n", "    kind: no_parking\n    timezone: Nowhere/City\n"),
            None,
            raises_at(8, "unknown time zone 'Nowhere/City'"),
        ),
        (
            edited(
                "    kind: privacy_mask\n",
                '    kind: privacy_mask\n    schedule: [{start: "08:00", end: "09:00"}]\n',
            ),
            None,
            raises_at(15, "take no schedule"),
        ),
        (
            edited("    kind: no_parking\n", "    kind: no_parking\n   bad: [1, 2\n"),
            None,
            raises_at(8, "invalid YAML"),
        ),
        (
            edited("    kind: no_parking\n", "    kind: no_parking\n    colour: red\n"),
            None,
            raises_at(8, "Extra"),
        ),
        ("", None, raises_at(1, "empty")),
    ],
)
def test_zone_file_errors_point_at_their_line(
    tmp_path: Path, text: str, class_names: tuple[str, ...] | None, expectation: Any
) -> None:
    path = tmp_path / "cam-01.yaml"
    path.write_text(text, encoding="utf-8")
    with expectation:
        zone_file = load_zone_file(path, class_names=class_names)
        assert [zone.name for zone in zone_file.zones] == ["curb-a", "mask-1"]


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    text = edited("name: mask-1", "name: curb-a").replace("[300, 200], [0, 200]", "[3000, 200], [0, 200]")
    path = tmp_path / "cam-01.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_zone_file(path)
    assert sorted(issue.line for issue in caught.value.issues) == [13, 15]
