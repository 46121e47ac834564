"""The case server's city configuration: event codes, time limits, calendar, grid, departments.

One YAML file (``CURBWATCH_CASE_CONFIG``), validated at load with line-precise errors; without a
file the embedded defaults apply (a Shanghai-style calendar and the national standard's codes).
It is read once at start-up and passed to whatever needs it; nothing changes it at run time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curbwatch.schema.yamlio import load_yaml_model
from curbwatch.schema.zones import EventCodeEntry, Violation, default_event_codes
from curbwatch.server.cases.deadlines import LimitUnit, TimeLimit, TimeLimitTable, WorkCalendar
from curbwatch.server.cases.folding import FoldingConfig
from curbwatch.server.open311.config import Open311Config

METRES_PER_DEGREE_LAT = 111_320.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GridConfig(_Strict):
    """The city-management grid (万米单元网格): square cells laid from a south-west origin."""

    origin_lat: float = Field(
        default=31.2,
        ge=-90,
        le=90,
        title="Origin latitude",
        description="Latitude of the grid's south-west corner.",
    )
    origin_lon: float = Field(
        default=121.4,
        ge=-180,
        le=180,
        title="Origin longitude",
        description="Longitude of the grid's south-west corner.",
    )
    cell_m: float = Field(default=100.0, gt=0, title="Cell size", description="Side of a cell in metres.")

    def cell_of(self, lat: float, lon: float) -> str:
        """The cell id ``r<row>c<col>`` holding (lat, lon); rows count north, columns east."""
        row = math.floor((lat - self.origin_lat) * METRES_PER_DEGREE_LAT / self.cell_m)
        metres_per_degree_lon = METRES_PER_DEGREE_LAT * math.cos(math.radians(self.origin_lat))
        col = math.floor((lon - self.origin_lon) * metres_per_degree_lon / self.cell_m)
        return f"r{row}c{col}"


def _default_limits() -> TimeLimitTable:
    hours, days = LimitUnit.WORKING_HOURS, LimitUnit.WORKING_DAYS
    return TimeLimitTable(
        limits={
            "0505": TimeLimit(unit=LimitUnit.CONTINUOUS_HOURS, amount=2),
            "0506": TimeLimit(unit=hours, amount=4),
            "0501": TimeLimit(unit=hours, amount=2),
            "0102": TimeLimit(unit=hours, amount=4),
        },
        default=TimeLimit(unit=days, amount=1),
    )


class CaseServerConfig(_Strict):
    """Everything city-specific the case server needs."""

    city: str = Field(default="Demo City", min_length=1, title="City", description="Shown in the UI.")
    event_codes: dict[Violation, EventCodeEntry] = Field(
        default_factory=default_event_codes,
        title="Event codes",
        description="The city's code and name for each violation; the Open311 services list.",
    )
    calendar: WorkCalendar = Field(
        default_factory=lambda: WorkCalendar(timezone="Asia/Shanghai"),
        title="Work calendar",
        description="Working days and hours that working-time limits count.",
    )
    time_limits: TimeLimitTable = Field(
        default_factory=_default_limits,
        title="Handling time limits",
        description="Per event code; the deadline runs from filing.",
    )
    folding: FoldingConfig = Field(
        default_factory=FoldingConfig,
        title="Case folding",
        description="When a new violation episode joins an open case instead of opening one.",
    )
    grid: GridConfig = Field(
        default_factory=GridConfig,
        title="Grid",
        description="The city-management grid that gives each case its cell from the event's location.",
    )
    departments: list[str] = Field(
        default_factory=lambda: [
            "城管执法 enforcement",
            "环卫 sanitation",
            "交警 traffic police",
            "市场监管 market",
        ],
        min_length=1,
        title="Departments",
        description="Handling departments a dispatcher can choose.",
    )
    recheck_on_handled: bool = Field(
        default=True,
        title="Re-check on handled",
        description="Ask the camera for a fresh image when a case is reported handled.",
    )
    open311: Open311Config = Field(
        default_factory=Open311Config,
        title="Open311",
        description="The GeoReport v2 endpoint this server offers and the city platforms cases go to.",
    )

    @model_validator(mode="after")
    def verify_limits_cover_codes(self) -> Self:
        """Every configured event code needs a handling limit (or the table needs a default)."""
        if self.time_limits.default is None:
            missing = sorted(
                e.code for e in self.event_codes.values() if e.code not in self.time_limits.limits
            )
            if missing:
                raise ValueError(f"event codes without a handling time limit: {missing}")
        return self

    def code_names(self) -> dict[str, str]:
        """Event code to its name."""
        return {entry.code: entry.name for entry in self.event_codes.values()}


def load_case_config(path: Path | str | None) -> CaseServerConfig:
    """The configuration in ``path``, or the embedded defaults when ``path`` is None.

    Raises:
        curbwatch.schema.yamlio.ConfigError: The file is unreadable or invalid (with lines).
    """
    if path is None:
        return CaseServerConfig()
    return load_yaml_model(CaseServerConfig, path)
