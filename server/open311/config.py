"""Open311 GeoReport v2 settings: the jurisdiction served and the upstream platforms forwarded to."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from curbwatch.schema.zones import EventCode
from curbwatch.server.cases.workflow import CaseStatus

UpstreamName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Letters, digits, '_', '.', '-'.")
]
Open311Status = Literal["open", "closed"]

DEFAULT_STATUS_MAP: dict[CaseStatus, Open311Status] = {
    CaseStatus.AWAITING_VERIFICATION: "open",
    CaseStatus.FILED: "open",
    CaseStatus.DISPATCHED: "open",
    CaseStatus.IN_PROGRESS: "open",
    CaseStatus.HANDLED: "open",
    CaseStatus.CHECKING: "open",
    CaseStatus.SUSPENDED: "open",
    CaseStatus.CLOSED: "closed",
    CaseStatus.VOID: "closed",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaseField(StrEnum):
    """A case value an upstream can receive as a GeoReport ``attribute[...]``."""

    CASE_ID = "case_id"
    CAMERA_ID = "camera_id"
    ZONE = "zone"
    GRID_CELL = "grid_cell"
    RULE = "rule"
    VIOLATION = "violation"
    DEADLINE = "deadline"
    FILED_AT = "filed_at"


class UpstreamConfig(_Strict):
    """A city platform that takes our filed cases through GeoReport v2 ``POST requests.json``."""

    base_url: str = Field(
        pattern=r"^https?://\S+$",
        title="Base URL",
        description="The upstream's GeoReport v2 endpoint; requests go to <base_url>/requests.json.",
    )
    api_key: SecretStr = Field(title="API key", description="Our key at the upstream (the api_key field).")
    jurisdiction_id: str | None = Field(
        default=None,
        min_length=1,
        title="Jurisdiction id",
        description="Sent as jurisdiction_id when the upstream serves several jurisdictions.",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, le=300, title="Timeout", description="Seconds one POST may take in all."
    )
    max_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        title="Max attempts",
        description="POSTs tried before the forwarding is marked failed.",
    )
    backoff_base_s: float = Field(
        default=30.0,
        gt=0,
        title="Back-off base",
        description="Wait after the first failed attempt; it doubles with each further failure.",
    )
    backoff_max_s: float = Field(
        default=3600.0, gt=0, title="Back-off cap", description="The longest wait between two attempts."
    )
    service_codes: dict[EventCode, str] = Field(
        default_factory=dict,
        title="Service codes",
        description="The upstream's service_code for one of our event codes; ours is sent when absent.",
    )
    attributes: dict[str, CaseField] = Field(
        default_factory=dict,
        title="Attributes",
        description="Extra attribute[<code>] fields to send, each filled from a case value.",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def verify_backoff(self) -> Self:
        """The cap must not be below the first wait."""
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) is below backoff_base_s ({self.backoff_base_s})"
            )
        return self


class Open311Config(_Strict):
    """What the Open311 endpoints publish and where filed cases are forwarded."""

    jurisdiction_id: str = Field(
        default="curbwatch.local",
        min_length=1,
        title="Jurisdiction id",
        description="The jurisdiction_id clients pass; the server answers for this one only.",
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        title="API keys",
        description=(
            "Keys that admit GeoReport clients without a sign-in (api_key query parameter). "
            "The media links they receive open evidence images, so hand keys out like passwords."
        ),
    )
    upstreams: dict[UpstreamName, UpstreamConfig] = Field(
        default_factory=dict,
        title="Upstreams",
        description="City platforms filed cases are forwarded to, by name.",
    )
    routing: dict[EventCode, list[UpstreamName]] = Field(
        default_factory=dict,
        title="Routing",
        description="Upstreams each event code is forwarded to; codes not listed are not forwarded.",
    )
    status_map: dict[CaseStatus, Open311Status] = Field(
        default_factory=lambda: dict(DEFAULT_STATUS_MAP),
        title="Status map",
        description=(
            "The GeoReport status (open or closed) of each case status; unlisted ones keep the default."
        ),
    )

    @field_validator("status_map", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        return {**DEFAULT_STATUS_MAP, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def verify_routing(self) -> Self:
        """Every routed name is a configured upstream, once per code."""
        for code, names in self.routing.items():
            unknown = sorted(set(names) - set(self.upstreams))
            if unknown:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise ValueError(
                    f"routing for event code {code} names unknown upstreams {unknown} (configured: {known})"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"routing for event code {code} names an upstream twice: {names}")
        return self

    def targets_for(self, event_code: str) -> list[str]:
        """The upstream names a case of ``event_code`` is forwarded to."""
        return list(self.routing.get(event_code, []))

    def open311_status(self, status: str) -> Open311Status:
        """The GeoReport status of a stored case status."""
        return self.status_map[CaseStatus(status)]
