"""Violation rules: ``ZoneHits`` and ``Tracks`` in, violation episodes (``EpisodeEvent``) out.

``RuleEngine`` builds one rule per rule zone of a camera: ``ParkingRule`` for no-parking zones,
``VendingRule`` for no-vending zones and, through a factory, the bin rule for bin sites. Every rule
follows the ``ZoneRule`` protocol and keeps its episodes with ``EpisodeBook``.
"""

from curbwatch.edge.rules.base import EpisodeBook, FrameClock, RuleError, ZoneRule, new_episode_id
from curbwatch.edge.rules.config import RulesConfig
from curbwatch.edge.rules.engine import RuleEngine
from curbwatch.edge.rules.parking import ParkingRule
from curbwatch.edge.rules.vending import VendingRule

__all__ = [
    "EpisodeBook",
    "FrameClock",
    "ParkingRule",
    "RuleEngine",
    "RuleError",
    "RulesConfig",
    "VendingRule",
    "ZoneRule",
    "new_episode_id",
]
