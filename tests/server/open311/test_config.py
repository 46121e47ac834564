"""Open311 configuration: routing, upstreams and the status map are checked when loaded."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from curbwatch.schema.yamlio import ConfigError
from curbwatch.server.config import load_case_config
from curbwatch.server.open311.config import Open311Config

UPSTREAM = {"base_url": "https://city.example/open311/v2", "api_key": "k"}


@pytest.mark.parametrize(
    ("settings", "expectation"),
    [
        ({"upstreams": {"city": UPSTREAM}, "routing": {"0505": ["city"]}}, nullcontext()),
        (
            {"upstreams": {"city": UPSTREAM}, "routing": {"0505": ["town"]}},
            pytest.raises(
                ValidationError, match=r"0505 names unknown upstreams \['town'\] \(configured: city\)"
            ),
        ),
        ({"routing": {"0505": ["town"]}}, pytest.raises(ValidationError, match=r"configured: none")),
        (
            {"upstreams": {"city": UPSTREAM}, "routing": {"0505": ["city", "city"]}},
            pytest.raises(ValidationError, match="names an upstream twice"),
        ),
        ({"routing": {"505": []}}, pytest.raises(ValidationError, match=r"routing\.505")),
        ({"upstreams": {"a b": UPSTREAM}}, pytest.raises(ValidationError, match=r"upstreams\.a b")),
        (
            {"upstreams": {"city": {**UPSTREAM, "base_url": "ftp://x"}}},
            pytest.raises(ValidationError, match="base_url"),
        ),
        (
            {"upstreams": {"city": {**UPSTREAM, "backoff_base_s": 100, "backoff_max_s": 10}}},
            pytest.raises(ValidationError, match="below backoff_base_s"),
        ),
        ({"upstreams": {"city": {"base_url": "https://x"}}}, pytest.raises(ValidationError, match="api_key")),
        ({"status_map": {"handled": "resolved"}}, pytest.raises(ValidationError, match="status_map")),
        ({"status_map": {"lost": "open"}}, pytest.raises(ValidationError, match="status_map")),
        ({"api_key": "typo"}, pytest.raises(ValidationError, match="api_key")),
    ],
)
def test_validation(settings: dict[str, Any], expectation: AbstractContextManager[Any]) -> None:
    with expectation:
        Open311Config.model_validate(settings)


def test_status_map_entries_override_the_defaults_only() -> None:
    config = Open311Config.model_validate({"status_map": {"handled": "closed"}})
    assert config.open311_status("handled") == "closed"
    assert config.open311_status("checking") == "open"
    assert config.open311_status("closed") == "closed"


def test_secrets_stay_out_of_dumps_and_reprs() -> None:
    config = Open311Config.model_validate(
        {"api_keys": ["client-secret"], "upstreams": {"city": {**UPSTREAM, "api_key": "our-secret"}}}
    )
    shown = repr(config) + config.model_dump_json()
    assert "client-secret" not in shown and "our-secret" not in shown
    assert config.upstreams["city"].base_url == "https://city.example/open311/v2"


def test_a_yaml_routing_error_names_the_file_and_the_upstream(tmp_path: Path) -> None:
    path = tmp_path / "city.yaml"
    path.write_text(
        "open311:\n"
        "  upstreams:\n"
        "    city: {base_url: 'https://city.example', api_key: k}\n"
        "  routing:\n"
        "    '0505': [cty]\n"
    )
    with pytest.raises(ConfigError, match="cty") as caught:
        load_case_config(path)
    assert "city.yaml" in str(caught.value)
    path.write_text(path.read_text().replace("[cty]", "[city]"))
    assert load_case_config(path).open311.targets_for("0505") == ["city"]
