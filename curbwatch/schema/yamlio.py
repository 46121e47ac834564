"""YAML loading with line-precise validation errors.

Operators edit zone and edge files by hand, so an error must point at the line to fix,
not only at a pydantic path. ruamel's round-trip loader keeps the line and column of every
mapping key and sequence item; we walk a pydantic error's ``loc`` through that tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a configuration file."""

    path: str
    line: int
    column: int
    location: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}"
        return f"{where}: {self.location}: {self.message}" if self.location else f"{where}: {self.message}"


class ConfigError(ValueError):
    """A configuration file failed to parse or validate; ``issues`` lists every problem."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def _to_plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(key): _to_plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_to_plain(item) for item in node]
    return node


def _line_of(tree: Any, loc: Sequence[int | str]) -> tuple[int, int]:
    """1-based line and column of the deepest node of ``loc`` that exists in ``tree``."""
    line, column = 1, 1
    node = tree
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            key_line, key_col = node.lc.key(part)
            line, column = key_line + 1, key_col + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            item_line, item_col = node.lc.item(part)
            line, column = item_line + 1, item_col + 1
            node = node[part]
        else:
            # pydantic adds union tags and the like to ``loc``; they name no YAML node.
            continue
    return line, column


def _format_loc(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML keeping line information, or raise :class:`ConfigError`."""
    try:
        tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError([ConfigIssue(source, line, column, "", f"invalid YAML: {exc.problem}")]) from exc
    if tree is None:
        raise ConfigError([ConfigIssue(source, 1, 1, "", "the file is empty")])
    return tree


def validate_tree(
    model: type[ModelT], tree: Any, source: str, context: dict[str, Any] | None = None
) -> ModelT:
    """Validate a parsed YAML tree, turning pydantic errors into line-precise ones."""
    try:
        return model.model_validate(_to_plain(tree), context=context)
    except ValidationError as exc:
        issues = []
        for error in exc.errors(include_url=False):
            loc = [part for part in error["loc"] if isinstance(part, int | str)]
            line, column = _line_of(tree, loc)
            message = error["msg"].removeprefix("Value error, ")
            issues.append(ConfigIssue(source, line, column, _format_loc(_named_parts(tree, loc)), message))
        raise ConfigError(issues) from exc


def _named_parts(tree: Any, loc: Sequence[int | str]) -> list[int | str]:
    """Drop the discriminator tags pydantic inserts into ``loc`` so paths read like the file."""
    parts: list[int | str] = []
    node = tree
    for part in loc:
        if (isinstance(node, CommentedMap) and part in node) or (
            isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
            parts.append(part)
        elif not isinstance(node, CommentedMap | CommentedSeq) or (
            isinstance(node, CommentedMap) and _is_missing_field(node, part)
        ):
            parts.append(part)
    return parts


def _is_missing_field(node: CommentedMap, part: int | str) -> bool:
    # pydantic puts the discriminator's value ("no_parking") and validator names
    # ("function-after[...]") into ``loc``; only a plain name absent from the map is a missing field.
    return isinstance(part, str) and "[" not in part and part not in set(map(str, node.values()))


def load_yaml_model(model: type[ModelT], path: Path | str, context: dict[str, Any] | None = None) -> ModelT:
    """Read, parse and validate a YAML file into ``model``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(source, 1, 1, "", f"cannot read file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(source, 1, 1, "", "the file is not UTF-8 text")]) from exc
    return validate_tree(model, parse_yaml(text, source), source, context)


def dump_yaml(data: Any) -> str:
    """Serialise plain data as block-style YAML (polygons stay on one line each)."""
    import io

    yaml = YAML(typ="rt")
    yaml.default_flow_style = None
    yaml.width = 120
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue()
