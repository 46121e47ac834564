"""``curbwatch synth`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from curbwatch.cli import app


def test_synth_writes_video_truth_zones_and_preview(tmp_path: Path) -> None:
    out = tmp_path / "street1"
    result = CliRunner().invoke(
        app,
        ["synth", "--seconds", "4", "--seed", "3", "--width", "320", "--height", "180", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    for suffix in (".mp4", ".json", ".yaml", ".png"):
        assert out.with_suffix(suffix).stat().st_size > 0
    truth = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert truth["seed"] == 3 and len(truth["frames"]) == 20


def test_synth_rejects_a_start_time_without_offset(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["synth", "--seconds", "2", "--out", str(tmp_path / "x"), "--start-time", "2026-11-25T09:00:00"]
    )
    assert result.exit_code == 1
    assert "UTC offset" in result.output


def test_synth_help_has_examples() -> None:
    result = CliRunner().invoke(app, ["synth", "--help"])
    assert result.exit_code == 0
    assert "curbwatch synth --seconds 120 --seed 3 --out build/synth/street1" in result.output


def test_synth_places_the_camera_on_the_map(tmp_path: Path) -> None:
    from curbwatch.schema.zones import load_zone_file

    out = tmp_path / "placed"
    args = ["synth", "--seconds", "2", "--width", "160", "--height", "90", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--lat", "31.2304", "--lon", "121.4737"])
    assert result.exit_code == 0, result.output
    location = load_zone_file(out.with_suffix(".yaml")).location
    assert location is not None and (location.lat, location.lon) == (31.2304, 121.4737)
    half = CliRunner().invoke(app, [*args, "--lat", "31.2"])
    assert half.exit_code == 1 and "--lat and --lon" in half.output
