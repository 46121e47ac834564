"""Illegal parking: a vehicle standing still inside a no-parking zone while the zone is in force."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from curbwatch.edge.messages import EpisodeEvent, Frame, Track, Tracks, ZoneHits
from curbwatch.edge.rules.base import EpisodeBook, FrameClock, IdFactory, new_episode_id
from curbwatch.edge.rules.config import RulesConfig
from curbwatch.schema.events import EndReason
from curbwatch.schema.zones import NoParkingZone, Violation

logger = logging.getLogger(__name__)


@dataclass
class _Inside:
    since_ts: float
    last_ts: float


class ParkingRule:
    """Flags vehicles parked in a no-parking zone, one episode per parked object.

    A vehicle's dwell counts from the latest of: when it stopped moving (the tracker's
    ``stationary_since_ts``), when its anchor entered the zone, and when the zone's schedule came
    into force. So a car parked before the no-parking hours is flagged ``min_dwell_s`` after they
    begin, and stop-and-go traffic never adds up short stops into one long one. The episode is
    keyed on the track id, which the tracker keeps across occlusions and id switches of parked
    objects; once started it keeps its violation and start time, and survives gaps shorter than
    ``end_grace_s`` (anchor jitter across the zone edge, a moment of "moving" from headlights,
    missed detections, a passing bus). Only tracks detected on the latest inferred frame count:
    the gap runs from the vehicle's last detection, however long the tracker keeps its track, so
    a car that drives off ends its episode ``end_grace_s`` later; one that comes back after a
    longer gap starts a new dwell from when it is seen again.

    Args:
        zone: The no-parking zone; gives the name, dwell and which classes are which violation.
        config: Shared rule timing.
        id_factory: Makes episode ids.

    Example:
        >>> rule = ParkingRule(zone, RulesConfig())  # doctest: +SKIP
        >>> events = rule.update(None, tracks, hits)  # doctest: +SKIP
    """

    def __init__(
        self, zone: NoParkingZone, config: RulesConfig, id_factory: IdFactory = new_episode_id
    ) -> None:
        self.zone = zone.name
        self._config = config
        # Vehicle classes win when a class is listed under both.
        self._violation_of = {
            label: Violation.ILLEGAL_PARKING_TWO_WHEELER for label in zone.two_wheeler_classes
        }
        self._violation_of.update({label: Violation.ILLEGAL_PARKING for label in zone.vehicle_classes})
        self._book = EpisodeBook(
            zone.name,
            min_dwell_s=zone.min_dwell_s,
            update_interval_s=config.update_interval_s,
            end_grace_s=config.end_grace_s,
            id_factory=id_factory,
        )
        self._clock = FrameClock(zone.name)
        self._inside: dict[int, _Inside] = {}

    def update(self, frame: Frame | None, tracks: Tracks, hits: ZoneHits) -> list[EpisodeEvent]:
        """Take one frame; return the start, update and end events it causes."""
        ts = self._clock.advance(tracks, hits)
        if self.zone not in hits.active:
            return self._out_of_force(ts)
        # A track the tracker only carries (lost, kept for re-identification) is not evidence of a
        # parked car: counting it would hold the episode open until the tracker drops the track.
        seen_ids = {track.track_id for track in tracks.items if self._clock.is_seen(track)}
        inside_ids = seen_ids.intersection(hits.inside(self.zone))
        self._note_inside(ts, inside_ids)
        parked: dict[int, tuple[Violation, float, Track]] = {}
        for track in tracks.items:
            violation = self._violation_of.get(track.label)
            if violation is None or track.stationary_since_ts is None or track.track_id not in inside_ids:
                continue
            since = max(track.stationary_since_ts, self._inside[track.track_id].since_ts)
            parked[track.track_id] = (violation, since, track)
        events = self._book.expire(ts, parked.keys())
        for track_id, (violation, since, track) in parked.items():
            event = self._book.observe(
                track_id,
                violation=violation,
                since_ts=since,
                ts=ts,
                objects=(track,),
                held_ts=track.last_seen_ts,
            )
            if event is not None:
                events.append(event)
        return events

    def close(self, ts: float, reason: EndReason = EndReason.STREAM_ENDED) -> list[EpisodeEvent]:
        """End every open episode (stream over, or zones replaced)."""
        events = self._book.end_all(self._clock.closing_ts(ts), reason)
        self._inside.clear()
        return events

    def _out_of_force(self, ts: float) -> list[EpisodeEvent]:
        if self._inside:
            logger.debug("zone %s: out of force at ts=%s", self.zone, ts)
        events = self._book.end_all(ts, EndReason.SCHEDULE_ENDED)
        self._inside.clear()
        return events

    def _note_inside(self, ts: float, inside_ids: set[int]) -> None:
        """Keep when each track entered the zone, bridging exits and absences shorter than the end grace.

        Entry times are only kept while the zone is in force, so for a vehicle already standing
        there when the schedule begins, it "entered" when the schedule began.
        """
        for track_id in inside_ids:
            entry = self._inside.get(track_id)
            if entry is None:
                self._inside[track_id] = _Inside(ts, ts)
            else:
                entry.last_ts = ts
        grace = self._config.end_grace_s
        for track_id in [tid for tid, entry in self._inside.items() if tid not in inside_ids]:
            if ts - self._inside[track_id].last_ts >= grace:
                del self._inside[track_id]
