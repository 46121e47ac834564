"""Render the committed JSON Schemas (docs/schemas) and configuration reference (docs/config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curbwatch.schema.detlog import LoggedFrame
from curbwatch.schema.events import event_json_schema
from curbwatch.schema.reference import ReferencePage, render_page
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


_PATHS_NOTE = (
    "Paths are the keys of the YAML file, dotted for nested sections; `[]` is an item of a list, "
    "`<key>` a value of a map, and `[kind=...]` the fields of one kind of a tagged list item. "
    "Unknown keys are errors, and every error names the file, the line and the field."
)


def reference_pages() -> list[ReferencePage]:
    """The configuration reference pages; the edge and server ones when their extras are installed."""
    pages = [
        ReferencePage(
            file_name="zones.md",
            title="Zone file reference (`zones/<camera>.yaml`)",
            model=ZoneFile,
            intro="One file per camera; guide and examples in [../zones.md](../zones.md). Check files "
            "with `curbwatch zones check zones/*.yaml`; JSON Schema: "
            "[../schemas/curbwatch.zones.v1.json](../schemas/curbwatch.zones.v1.json).\n\n" + _PATHS_NOTE,
        )
    ]
    try:
        from curbwatch.edge.config import EdgeConfig

        pages.insert(
            0,
            ReferencePage(
                file_name="edge.md",
                title="Edge configuration reference (`edge.yaml`)",
                model=EdgeConfig,
                intro="Everything one edge box runs; validate with `curbwatch edge check-config edge.yaml`, "
                "run with `curbwatch edge run edge.yaml`. Relative paths are taken from the file's own "
                "folder. A deployment example: "
                "[../../deploy/edge.example.yaml](../../deploy/edge.example.yaml) and "
                "[../deploy-edge.md](../deploy-edge.md); JSON Schema: "
                "[../schemas/curbwatch.edge-config.v1.json](../schemas/curbwatch.edge-config.v1.json)."
                "\n\n" + _PATHS_NOTE,
            ),
        )
    except ImportError:
        pass
    try:
        from curbwatch.server.config import CaseServerConfig
        from curbwatch.server.settings import ServerSettings

        pages += [
            ReferencePage(
                file_name="case-server.md",
                title="Case server city configuration reference (`CURBWATCH_CASE_CONFIG`)",
                model=CaseServerConfig,
                intro="The city's codes, time limits, calendar, grid, departments and Open311 routing, in "
                "one YAML file named by `CURBWATCH_CASE_CONFIG`; without it the defaults below apply. "
                "Example: [../../deploy/case-server.yaml](../../deploy/case-server.yaml); guide: "
                "[../server.md](../server.md); JSON Schema: "
                "[../schemas/curbwatch.case-server.v1.json](../schemas/curbwatch.case-server.v1.json)."
                "\n\n" + _PATHS_NOTE,
            ),
            ReferencePage(
                file_name="server-settings.md",
                title="Server settings reference (`CURBWATCH_*` environment variables)",
                model=ServerSettings,
                intro="Every `curbwatch server ...` process (ingest workers, web, forwarder) reads these "
                "variables at start; command-line options override some of them. Values are validated "
                "at start and an invalid one stops the process with the variable's name.",
                env_prefix=ServerSettings.model_config.get("env_prefix", ""),
            ),
        ]
    except ImportError:
        pass
    return pages


def render_reference() -> dict[str, str]:
    """File name -> Markdown of every configuration reference page."""
    return {page.file_name: render_page(page) for page in reference_pages()}


def stale_files(directory: Path, rendered: dict[str, str]) -> list[str]:
    """Names of the rendered files that are missing from ``directory`` or differ from it."""
    return [
        name
        for name, text in rendered.items()
        if not (directory / name).exists() or (directory / name).read_text(encoding="utf-8") != text
    ]


def write_files(directory: Path, rendered: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (directory / name).write_text(text, encoding="utf-8")
