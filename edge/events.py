"""Turn rule episodes into ``curbwatch.event.v1`` documents."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from curbwatch.edge.messages import EpisodeEvent, Track
from curbwatch.schema.events import EventV1, EvidenceRefV1, ModelRefV1, ObjectV1, ts_to_datetime
from curbwatch.schema.zones import RULE_OF_VIOLATION, EventCodeEntry, ZoneFile


class EventBuilder:
    """Builds wire events for one camera.

    Args:
        device_id: The edge box's id.
        zone_file: The camera's zones (event-code table, location).
        model: Provenance of the detector, or None in replay; a callable gives the model in force
            at each event (a model update swaps it while the camera runs).
        estimator: Name of the bin-state estimator, reported on bin events.
        new_id: Event-id factory; tests inject a deterministic one.

    Example:
        >>> builder = EventBuilder("edge-1", zone_file, model=None)
        >>> event = builder.build(episode_event, frame_wh=(1280, 720))
    """

    def __init__(
        self,
        device_id: str,
        zone_file: ZoneFile,
        model: ModelRefV1 | Callable[[], ModelRefV1] | None,
        estimator: str | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._device_id = device_id
        self._zone_file = zone_file
        self._zones = {zone.name: zone for zone in zone_file.zones}
        self._model = model
        self._estimator = estimator
        self._new_id = new_id

    def for_zones(self, zone_file: ZoneFile) -> EventBuilder:
        """The same builder for a replaced zone file (remote config)."""
        return EventBuilder(self._device_id, zone_file, self._model, self._estimator, self._new_id)

    def event_code(self, episode: EpisodeEvent) -> EventCodeEntry:
        """The city code the episode is filed under (zone override, else the file's table)."""
        return self._zone_file.event_code(self._zones[episode.zone], episode.violation)  # type: ignore[arg-type]

    def build(
        self, episode: EpisodeEvent, frame_wh: tuple[int, int], evidence: Sequence[EvidenceRefV1] = ()
    ) -> EventV1:
        code = self.event_code(episode)
        location = self._zone_file.location
        return EventV1(
            event_id=self._new_id(),
            episode_id=episode.episode_id,
            type=episode.type,
            device_id=self._device_id,
            camera_id=self._zone_file.camera,
            zone=episode.zone,
            rule=RULE_OF_VIOLATION[episode.violation],
            violation=episode.violation,
            event_code=code.code,
            event_name=code.name,
            episode_start=ts_to_datetime(episode.episode_start_ts),
            ts=ts_to_datetime(episode.ts),
            dwell_s=round(episode.dwell_s, 3),
            end_reason=episode.end_reason,
            frame_wh=frame_wh,
            objects=[_object(track, episode.ts) for track in episode.objects],
            state_score=episode.state_score,
            evidence=list(evidence),
            model=(self._model() if callable(self._model) else self._model) if episode.objects else None,
            estimator=self._estimator if episode.state_score is not None else None,
            location=(location.lat, location.lon) if location else None,
        )


def _object(track: Track, ts: float) -> ObjectV1:
    return ObjectV1(
        track_id=track.track_id,
        label=track.label,
        score=round(min(max(track.score, 0.0), 1.0), 4),
        xyxy=tuple(round(v, 1) for v in track.xyxy),  # type: ignore[arg-type]
        stationary_s=round(track.stationary_s(ts), 3),
    )
