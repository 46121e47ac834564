"""Render the committed JSON Schemas (docs/schemas) from the pydantic models."""

from __future__ import annotations

import json
from typing import Any

from curbwatch.schema.detlog import LoggedFrame
from curbwatch.schema.events import event_json_schema
from curbwatch.schema.zones import ZoneFile


def _dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def render_schemas() -> dict[str, str]:
    """File name -> schema text; the edge and case-server configs' when their extras are installed."""
    schemas = {
        "curbwatch.event.v1.json": _dump(event_json_schema()),
        "curbwatch.detlog.v1.json": _dump(LoggedFrame.model_json_schema(by_alias=True)),
        "curbwatch.zones.v1.json": _dump(ZoneFile.model_json_schema()),
    }
    try:
        from curbwatch.edge.config import EdgeConfig

        schemas["curbwatch.edge-config.v1.json"] = _dump(EdgeConfig.model_json_schema())
    except ImportError:
        pass
    try:
        from curbwatch.server.config import CaseServerConfig

        schemas["curbwatch.case-server.v1.json"] = _dump(CaseServerConfig.model_json_schema())
    except ImportError:
        pass
    return schemas
