"""Settings shared by every violation rule of a camera.

Per-zone settings (dwell, classes, vendor radius) live in the zone file
(``curbwatch.schema.zones``); this section holds the timing and grouping knobs that are the same
for all zones and are tuned by the operator, not drawn by the person who draws the zones.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RulesConfig(BaseModel):
    """Timing and grouping settings of the violation rules.

    Attributes:
        update_interval_s: How often an ongoing episode emits an ``update`` event. Shorter gives the
            case desk fresher evidence at the cost of more messages.
        end_grace_s: How long the condition must be seen absent before an episode ends. Longer
            survives missed detections and passing occluders without splitting an episode in two,
            but reports a real departure later.
        vending_min_people_share: Share of ``vending_people_window_s`` during which a person must be
            near a stall for it to count as staffed. Vendors walk about, so this is well below 1;
            too low and a stall that passers-by brush past counts as staffed.
        vending_people_window_s: The window that share is measured over.
        vending_person_recent_s: A person track counts as present while its last detection is at
            most this old, so frames where the detector did not run still count.
        stall_link_diagonals: Two vending objects belong to one stall when the gap between their
            boxes is at most this many (mean) box diagonals.
        stall_match_min_overlap: A stall seen now is the same stall as one seen before when their
            boxes overlap by at least this share of the smaller box, so id churn of umbrellas and
            tables does not open a second episode.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    update_interval_s: float = Field(
        default=60.0,
        gt=0,
        title="Update interval (s)",
        description="How often an ongoing episode emits an update event.",
    )
    end_grace_s: float = Field(
        default=30.0,
        ge=0,
        title="End grace (s)",
        description="How long the condition must be seen absent before its episode ends; bridges missed "
        "detections and brief occlusions.",
    )
    vending_min_people_share: float = Field(
        default=0.3,
        gt=0,
        le=1,
        title="Vendor presence share",
        description="Share of the presence window a person must be near a stall for it to count as staffed.",
    )
    vending_people_window_s: float = Field(
        default=300.0,
        gt=0,
        title="Vendor presence window (s)",
        description="Window over which the vendor presence share is measured.",
    )
    vending_person_recent_s: float = Field(
        default=5.0,
        ge=0,
        title="Person recency (s)",
        description="A person track counts as present while its last detection is at most this old.",
    )
    stall_link_diagonals: float = Field(
        default=1.0,
        ge=0,
        title="Stall link distance (diagonals)",
        description="Vending objects at most this many mean box diagonals apart form one stall.",
    )
    stall_match_min_overlap: float = Field(
        default=0.2,
        gt=0,
        le=1,
        title="Stall match overlap",
        description="Overlap (share of the smaller box) that makes a stall seen now the one seen before.",
    )
