"""PKLot XML import into zone files."""

from pathlib import Path

import pytest
from shapely.geometry import Polygon

from curbwatch.schema.pklot import PklotError, pklot_to_zone_file, zone_file_to_yaml
from curbwatch.schema.yamlio import parse_yaml, validate_tree
from curbwatch.schema.zones import NoParkingZone, ZoneFile


def pklot_xml(data_dir: Path) -> Path:
    return next((data_dir / "pklot-ufpr05" / "sequence0" / "bounding_boxes").glob("*.xml"))


def test_imports_every_bay_of_the_real_file(data_dir: Path) -> None:
    zones = pklot_to_zone_file(
        pklot_xml(data_dir),
        camera="ufpr05",
        frame_wh=(1280, 720),
        timezone="America/Sao_Paulo",
        min_dwell_s=600,
    )
    assert len(zones.zones) == 40
    assert all(isinstance(z, NoParkingZone) and z.min_dwell_s == 600 for z in zones.zones)
    first = zones.zones[0]
    assert first.name == "bay-1"
    assert first.polygon == [(608, 613), (741, 654), (775, 582), (608, 526)]
    assert all(Polygon(z.polygon).is_valid for z in zones.zones)


def test_yaml_output_loads_back_identically(data_dir: Path) -> None:
    zones = pklot_to_zone_file(pklot_xml(data_dir), camera="ufpr05", frame_wh=(1280, 720), timezone="UTC")
    text = zone_file_to_yaml(zones)
    assert validate_tree(ZoneFile, parse_yaml(text, "out.yaml"), "out.yaml") == zones


def test_falls_back_to_rotated_rect(tmp_path: Path) -> None:
    xml = tmp_path / "p.xml"
    xml.write_text(
        '<parking id="x"><space id="7"><rotatedRect><center x="100" y="100"/><size w="40" h="20"/>'
        '<angle d="90"/></rotatedRect><contour><point x="1" y="1"/></contour></space></parking>'
    )
    zone = pklot_to_zone_file(xml, camera="c", frame_wh=(640, 480), timezone="UTC").zones[0]
    xs = sorted(round(x) for x, _ in zone.polygon)
    ys = sorted(round(y) for _, y in zone.polygon)
    assert (xs[0], xs[-1], ys[0], ys[-1]) == (90, 110, 80, 120)  # rotated 90°: 20 wide, 40 high


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("<not-xml", "cannot read PKLot XML"),
        ("<garage/>", "expected <parking>"),
        ("<parking/>", "no <space>"),
        ('<parking><space id="1"/></parking>', "neither a valid contour nor a rotatedRect"),
    ],
)
def test_bad_files(tmp_path: Path, content: str, message: str) -> None:
    xml = tmp_path / "bad.xml"
    xml.write_text(content)
    with pytest.raises(PklotError, match=message):
        pklot_to_zone_file(xml, camera="c", frame_wh=(640, 480), timezone="UTC")
