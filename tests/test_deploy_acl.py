"""The shipped Mosquitto ACL lets a device use every channel of the protocol, in its direction only."""

import re

from curbwatch.schema.protocol import ROOT, Channel
from curbwatch.server.ingest import INGESTED_CHANNELS
from tests.conftest import REPO_ROOT

# The edge publishes (ACL `write`) exactly what the ingest worker subscribes to; the rest it reads.
EDGE_PUBLISHES = set(INGESTED_CHANNELS)
# Channels whose topics carry more levels after the channel name.
SUFFIXED = {Channel.EVIDENCE: "+", Channel.MODEL: "#"}


def device_patterns() -> dict[str, set[str]]:
    text = (REPO_ROOT / "deploy" / "mosquitto" / "acl").read_text(encoding="utf-8")
    patterns: dict[str, set[str]] = {"read": set(), "write": set(), "readwrite": set()}
    for access, pattern in re.findall(r"^pattern (read|write|readwrite) (\S+)$", text, flags=re.MULTILINE):
        patterns[access].add(pattern)
    return patterns


def test_every_channel_is_allowed_in_its_direction_only() -> None:
    patterns = device_patterns()
    assert not patterns["readwrite"], "devices get one direction per channel"
    for channel in Channel:
        topic = f"{ROOT}/%u/{channel.value}" + (f"/{SUFFIXED[channel]}" if channel in SUFFIXED else "")
        allowed, forbidden = ("write", "read") if channel in EDGE_PUBLISHES else ("read", "write")
        assert topic in patterns[allowed], f"{channel.name}: the ACL lacks `pattern {allowed} {topic}`"
        assert topic not in patterns[forbidden], f"{channel.name}: a device may not {forbidden} {topic}"


def test_acl_names_no_unknown_channel() -> None:
    known = {channel.value for channel in Channel}
    for pattern in set().union(*device_patterns().values()):
        rest = pattern.removeprefix(f"{ROOT}/%u/")
        channel = re.sub(r"/[+#]$", "", rest)
        assert channel in known, f"ACL pattern {pattern} names no protocol channel"
