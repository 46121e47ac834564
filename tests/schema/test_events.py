"""The wire format: validation, JSON round trip, and the committed JSON Schema."""

import json
from datetime import UTC, datetime

import jsonschema
import pytest
from pydantic import ValidationError

from curbwatch.schema.events import EventV1, event_json_schema, example_event_document
from curbwatch.schema.export import render_schemas
from tests.conftest import REPO_ROOT


def event(**overrides: object) -> dict:
    data = {
        **example_event_document(
            event_id="a" * 32, episode_id="b" * 32, episode_start="2026-11-27T01:00:00Z"
        ),
        "objects": [
            {"track_id": 3, "label": "car", "score": 0.8, "xyxy": [1, 2, 30, 40], "stationary_s": 121.0}
        ],
        "evidence": [
            {
                "role": "clean",
                "sha256": "c" * 64,
                "size_bytes": 1000,
                "width": 1280,
                "height": 720,
                "path": "cam-1/x.jpg",
                "restricted": True,
            }
        ],
    }
    return {**data, **overrides}


def test_round_trip_through_json() -> None:
    parsed = EventV1.model_validate(event())
    again = EventV1.model_validate_json(parsed.to_json())
    assert again == parsed
    assert json.loads(parsed.to_json())["schema"] == "curbwatch.event.v1"
    assert parsed.ts == datetime(2026, 11, 27, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"event_id": "not-hex"}, "event_id"),
        ({"type": "begin"}, "type"),
        ({"event_code": "505"}, "event_code"),
        ({"ts": "2026-11-27T01:02:00"}, "time zone"),
        ({"surprise": 1}, "surprise"),
        (
            {
                "evidence": [
                    {
                        "role": "clean",
                        "sha256": "XYZ",
                        "size_bytes": 1,
                        "width": 1,
                        "height": 1,
                        "path": "p",
                        "restricted": True,
                    }
                ]
            },
            "sha256",
        ),
    ],
)
def test_rejects_bad_events(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EventV1.model_validate(event(**overrides))


def test_json_schema_accepts_what_the_model_emits_and_rejects_garbage() -> None:
    schema = event_json_schema()
    emitted = json.loads(EventV1.model_validate(event()).to_json())
    jsonschema.validate(emitted, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**emitted, "type": "begin"}, schema)


def test_committed_schemas_are_current() -> None:
    for name, text in render_schemas().items():
        path = REPO_ROOT / "docs" / "schemas" / name
        assert path.read_text(encoding="utf-8") == text, f"{name} is stale: run `make schemas`"
