"""The case server's city configuration: defaults, the example file, line-precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from curbwatch.schema.yamlio import ConfigError
from curbwatch.server.config import CaseServerConfig, GridConfig, load_case_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "case-server.yaml"


def test_the_example_file_is_valid_and_matches_the_defaults_where_it_repeats_them() -> None:
    loaded = load_case_config(EXAMPLE)
    defaults = CaseServerConfig()
    assert loaded.event_codes == defaults.event_codes
    assert loaded.time_limits == defaults.time_limits
    assert len(loaded.calendar.holidays) == 3


def test_without_a_file_the_embedded_defaults_apply() -> None:
    assert load_case_config(None) == CaseServerConfig()


def test_an_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "city.yaml"
    path.write_text('city: X\ntime_limits:\n  limits:\n    "0505": {unit: fortnights, amount: 2}\n')
    with pytest.raises(ConfigError) as caught:
        load_case_config(path)
    assert caught.value.issues[0].line == 4
    assert "unit" in str(caught.value)


def test_codes_without_a_limit_and_no_default_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "city.yaml"
    path.write_text('time_limits:\n  limits:\n    "0505": {unit: natural_days, amount: 1}\n')
    with pytest.raises(ConfigError, match="without a handling time limit"):
        load_case_config(path)


def test_grid_cells_are_square_and_grow_north_and_east() -> None:
    grid = GridConfig(origin_lat=31.0, origin_lon=121.0, cell_m=100)
    assert grid.cell_of(31.0, 121.0) == "r0c0"
    assert grid.cell_of(31.0 + 150 / 111_320, 121.0) == "r1c0"
    assert grid.cell_of(31.0, 121.0 - 1e-6) == "r0c-1"
