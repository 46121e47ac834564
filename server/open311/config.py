"""Open311 GeoReport v2 settings: the jurisdiction served and the upstream platforms forwarded to."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Open311Config(BaseModel):
    """What the Open311 endpoints publish and where filed cases are forwarded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jurisdiction_id: str = Field(
        default="curbwatch.local",
        min_length=1,
        title="Jurisdiction id",
        description="The jurisdiction_id clients pass; the server answers for this one only.",
    )
