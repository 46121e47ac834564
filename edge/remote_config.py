"""Desired configuration from the server: validated first, applied without restarting cameras.

The server publishes a retained, signed ``DesiredConfigV1`` (zone files per camera, detector
thresholds). The edge checks the signature, validates every zone file against the detector's
vocabulary and the cameras it runs, and only then applies all of it; anything invalid leaves
the previous configuration in force. Either way it reports what it did (``ReportedConfigV1``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curbwatch.schema.protocol import DesiredConfigV1, ReportedConfigV1, verify
from curbwatch.schema.zones import ZoneFile

logger = logging.getLogger(__name__)


class RemoteConfigError(ValueError):
    """A desired configuration was refused; the previous one stays in force."""


class ConfigTarget(Protocol):
    """What applying a configuration needs from the running edge (``EdgeRunner``)."""

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def camera_ids(self) -> tuple[str, ...]: ...

    def replace_zones(self, zone_file: ZoneFile) -> None: ...

    def set_thresholds(self, score_threshold: float, class_thresholds: dict[str, float]) -> None: ...


class DetectorThresholds(BaseModel):
    """The detector settings a desired configuration may change at run time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score_threshold: float = Field(ge=0, le=1)
    class_thresholds: dict[str, float] = Field(default_factory=dict)


class RemoteConfig:
    """Applies desired configurations to a running edge.

    Args:
        target: The running edge.
        device_id: This box's id, for the report.
        key: The device's HMAC key; the server signs desired configurations with it.
        clock: Wall clock for report timestamps (reports are about now, not about a frame).

    Example:
        >>> remote = RemoteConfig(runner, "edge-1", key)
        >>> report = remote.apply(message.payload)  # publish report on config/reported
    """

    def __init__(
        self,
        target: ConfigTarget,
        device_id: str,
        key: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._target = target
        self._device_id = device_id
        self._key = key
        self._clock = clock
        self.applied_version: str | None = None

    def apply(self, payload: bytes) -> ReportedConfigV1:
        """Validate and apply one desired configuration; never raises for a bad one."""
        version = None
        try:
            desired = self._parse(payload)
            version = desired.version
            if version == self.applied_version:
                return self._report(None, None)  # the retained copy again, after a reconnect
            zone_files, thresholds = self._validate(desired)
        except RemoteConfigError as exc:
            logger.error("desired config %s refused, previous stays in force: %s", version or "?", exc)
            return self._report(version or "unknown", str(exc))
        for zone_file in zone_files:
            self._target.replace_zones(zone_file)
        if thresholds is not None:
            self._target.set_thresholds(thresholds.score_threshold, thresholds.class_thresholds)
        self.applied_version = version
        logger.info("desired config %s applied (%d zone files)", version, len(zone_files))
        return self._report(None, None)

    def _parse(self, payload: bytes) -> DesiredConfigV1:
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RemoteConfigError(f"not JSON: {exc}") from exc
        if not isinstance(document, dict) or not verify(document, self._key):
            raise RemoteConfigError("signature does not match this device's key")
        try:
            return DesiredConfigV1.model_validate(document)
        except ValidationError as exc:
            raise RemoteConfigError(_first_error(exc)) from exc

    def _validate(self, desired: DesiredConfigV1) -> tuple[list[ZoneFile], DetectorThresholds | None]:
        names = self._target.class_names
        zone_files = []
        for camera_id, document in desired.zones.items():
            if camera_id not in self._target.camera_ids:
                raise RemoteConfigError(f"camera {camera_id!r} does not run on this box")
            try:
                zone_file = ZoneFile.model_validate(document, context={"class_names": names})
            except ValidationError as exc:
                raise RemoteConfigError(f"zones of {camera_id}: {_first_error(exc)}") from exc
            if zone_file.camera != camera_id:
                raise RemoteConfigError(f"zones under {camera_id!r} are for camera {zone_file.camera!r}")
            zone_files.append(zone_file)
        thresholds = None
        if desired.detector:
            try:
                thresholds = DetectorThresholds.model_validate(desired.detector)
            except ValidationError as exc:
                raise RemoteConfigError(f"detector: {_first_error(exc)}") from exc
            unknown = sorted(set(thresholds.class_thresholds) - set(names))
            if unknown:
                raise RemoteConfigError(
                    f"detector: thresholds for classes the model lacks: {', '.join(unknown)}"
                )
        return zone_files, thresholds

    def _report(self, rejected: str | None, error: str | None) -> ReportedConfigV1:
        return ReportedConfigV1(
            device_id=self._device_id,
            applied_version=self.applied_version,
            rejected_version=rejected,
            error=error,
            ts=self._clock(),
        )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
