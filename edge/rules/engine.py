"""The rule engine: every violation rule of one camera, run frame by frame."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from curbwatch.edge.messages import EpisodeEvent, Frame, Tracks, ZoneHits
from curbwatch.edge.rules.base import IdFactory, RuleError, ZoneRule, new_episode_id
from curbwatch.edge.rules.config import RulesConfig
from curbwatch.edge.rules.parking import ParkingRule
from curbwatch.edge.rules.vending import VendingRule
from curbwatch.schema.events import EndReason
from curbwatch.schema.zones import BinSiteZone, NoParkingZone, NoVendingZone, PermittedVendingZone

logger = logging.getLogger(__name__)


class RuleZoneSource(Protocol):
    """What the engine needs of ``curbwatch.edge.zones.ZoneSet``."""

    def rule_zones(self) -> Sequence[NoParkingZone | NoVendingZone | BinSiteZone]: ...

    def permitted_vending_zones(self) -> Sequence[PermittedVendingZone]: ...


BinRuleFactory = Callable[[BinSiteZone, Any], ZoneRule]
"""Builds the rule of one bin site from the zone and the camera's ``ZoneSet``."""


class RuleEngine:
    """Runs one rule per rule zone of a camera and gathers their episode events.

    No-parking zones get a ``ParkingRule``, no-vending zones a ``VendingRule`` (exempting every
    permitted-vending zone of the camera), bin sites whatever ``bin_rule_factory`` builds; without a
    factory bin sites are skipped, since judging them needs an image model the caller chooses.

    Args:
        zone_set: The camera's zones (``curbwatch.edge.zones.ZoneSet``).
        config: Shared rule timing.
        bin_rule_factory: Builds bin-site rules; None skips bin sites.
        id_factory: Makes episode ids for the parking and vending rules; inject one in tests.

    Example:
        >>> engine = RuleEngine(ZoneSet(zone_file, (1920, 1080)), RulesConfig())  # doctest: +SKIP
        >>> events = engine.update(frame, tracks, zone_set.test(tracks))  # doctest: +SKIP
    """

    def __init__(
        self,
        zone_set: RuleZoneSource,
        config: RulesConfig,
        bin_rule_factory: BinRuleFactory | None = None,
        id_factory: IdFactory = new_episode_id,
    ) -> None:
        permitted = [zone.name for zone in zone_set.permitted_vending_zones()]
        self._rules: list[ZoneRule] = []
        for zone in zone_set.rule_zones():
            if isinstance(zone, NoParkingZone):
                self._rules.append(ParkingRule(zone, config, id_factory))
            elif isinstance(zone, NoVendingZone):
                self._rules.append(VendingRule(zone, permitted, config, id_factory))
            elif not isinstance(zone, BinSiteZone):
                raise RuleError(f"zone {zone.name!r}: no rule for zones of kind {zone.kind!r}")
            elif bin_rule_factory is not None:
                self._rules.append(bin_rule_factory(zone, zone_set))
            else:
                logger.info("bin site %s skipped: no bin rule factory given", zone.name)
        logger.debug(
            "rule engine with %d rules: %s", len(self._rules), ", ".join(r.zone for r in self._rules)
        )

    @property
    def rules(self) -> tuple[ZoneRule, ...]:
        return tuple(self._rules)

    def update(self, frame: Frame | None, tracks: Tracks, hits: ZoneHits) -> list[EpisodeEvent]:
        """Run every rule on one frame; events come in zone-file order."""
        events: list[EpisodeEvent] = []
        for rule in self._rules:
            events.extend(rule.update(frame, tracks, hits))
        return events

    def close(self, ts: float, reason: EndReason = EndReason.STREAM_ENDED) -> list[EpisodeEvent]:
        """End every open episode of every rule (stream over, or zones replaced)."""
        events: list[EpisodeEvent] = []
        for rule in self._rules:
            events.extend(rule.close(ts, reason))
        return events
