"""Markdown reference pages of the configuration models (docs/config), generated, never hand-written.

Every field of a model becomes one table row: its path in the file (or its environment variable),
type, default, constraints and description, so the reference cannot drift from the code that
validates the file. Nested models are flattened into dotted paths; list items are ``[]``, map
values ``<key>``, and each member of a tagged union is its own row group (``zones[kind=...]``).
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr, TypeAdapter
from pydantic.fields import FieldInfo

NO_DESCRIPTION = "**(no description)**"
_SCALAR_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret string",
    time: "time (HH:MM)",
    datetime: "date-time (ISO 8601)",
    date: "date (YYYY-MM-DD)",
    type(None): "null",
    Any: "any",
}


@dataclass(frozen=True)
class FieldRow:
    """One documented field."""

    path: str
    type: str
    default: str
    constraints: str
    description: str
    owner: type[BaseModel]
    name: str


@dataclass(frozen=True)
class ReferencePage:
    """One generated page: a top-level model and how users supply it."""

    file_name: str
    title: str
    model: type[BaseModel]
    intro: str
    env_prefix: str | None = None  # settings models: each field is an environment variable


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """Strip ``Annotated`` and return the bare type with its metadata (constraints, discriminator)."""
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        for item in extra:
            # A FieldInfo carries constraints in .metadata and a discriminator of its own.
            metadata.extend([item, *item.metadata] if isinstance(item, FieldInfo) else [item])
    return annotation, metadata


def _union_members(annotation: Any) -> tuple[Any, ...] | None:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return None


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def type_name(annotation: Any) -> str:
    """A reader's name for a type: ``list of number``, ``one of: `a`, `b```, ``object`` ..."""
    annotation, _ = _unwrap(annotation)
    members = _union_members(annotation)
    if members is not None:
        names = list(dict.fromkeys(type_name(member) for member in members if member is not type(None)))
        optional = " or null" if type(None) in members else ""
        return " or ".join(names) + optional
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of: " + ", ".join(f"`{_plain(value)}`" for value in get_args(annotation))
    if origin in (list, set, frozenset):
        return f"list of {type_name(get_args(annotation)[0])}"
    if origin is tuple:
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return f"[{', '.join(type_name(arg) for arg in args)}]"
    if origin is dict:
        key, value = get_args(annotation)
        return f"map of {type_name(key)} to {type_name(value)}"
    if inspect.isclass(annotation) and issubclass(annotation, Enum):
        return "one of: " + ", ".join(f"`{member.value}`" for member in annotation)
    if _is_model(annotation):
        return "object"
    return _SCALAR_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _plain(value: Any) -> str:
    return value.value if isinstance(value, Enum) else str(value)


def _constraints(metadata: list[Any]) -> list[str]:
    words: list[str] = []
    for item in metadata:
        match item:
            case annotated_types.Ge(ge=bound):
                words.append(f"≥ {bound}")
            case annotated_types.Gt(gt=bound):
                words.append(f"> {bound}")
            case annotated_types.Le(le=bound):
                words.append(f"≤ {bound}")
            case annotated_types.Lt(lt=bound):
                words.append(f"< {bound}")
            case annotated_types.MinLen(min_length=length):
                words.append(f"at least {length} long")
            case annotated_types.MaxLen(max_length=length):
                words.append(f"at most {length} long")
            case _ if getattr(item, "pattern", None):
                words.append(f"matches `{item.pattern}`")
    return words


def _element_constraints(annotation: Any) -> list[str]:
    """Constraints on list items or map values, e.g. per-class thresholds in [0, 1]."""
    annotation, _ = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin in (list, tuple, dict):
        inner = get_args(annotation)[-1]
        words = _constraints(_unwrap(inner)[1])
        label = "each value" if origin is dict else "each item"
        return [f"{label} {word}" for word in words]
    return []


def _render_default(value: Any, annotation: Any) -> str:
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "null"
    data = TypeAdapter(annotation).dump_python(value, mode="json")
    return f"`{json.dumps(data, ensure_ascii=False)}`"


def _field_default(field: FieldInfo, parent_default: BaseModel | None, name: str) -> tuple[bool, Any]:
    """(has a default, the value); a default parent instance overrides the field's own default."""
    if parent_default is not None:
        return True, getattr(parent_default, name)
    if field.is_required():
        return False, None
    return True, field.get_default(call_default_factory=True)


def _nested_models(annotation: Any, path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """(path, model) for every model reachable inside a field's type: optional, list, map, union."""
    annotation, metadata = _unwrap(annotation)
    members = _union_members(annotation)
    if members is not None:
        models = [member for member in members if _is_model(_unwrap(member)[0])]
        discriminator = next((m.discriminator for m in metadata if getattr(m, "discriminator", None)), None)
        for member in members:
            bare = _unwrap(member)[0]
            if not _is_model(bare):
                yield from _nested_models(member, path)
            elif discriminator and len(models) > 1:
                tag = get_args(bare.model_fields[discriminator].annotation)[0]
                yield f"{path.removesuffix('[]')}[{discriminator}={_plain(tag)}]", bare
            else:
                yield path, bare
        return
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        for arg in get_args(annotation):
            if arg is not Ellipsis:
                yield from _nested_models(arg, f"{path}[]")
    elif origin is dict:
        key, value = get_args(annotation)
        key_name = "key"
        if inspect.isclass(key) and issubclass(key, Enum):
            key_name = key.__name__.lower()
        yield from _nested_models(value, f"{path}.<{key_name}>")
    elif _is_model(annotation):
        yield path, annotation


def field_rows(
    model: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None
) -> Iterator[FieldRow]:
    """Every field of ``model`` and of the models inside it, depth first, in declaration order."""
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        has_default, default = _field_default(field, defaults, name)
        constraints = _constraints(field.metadata) + _element_constraints(field.annotation)
        yield FieldRow(
            path=path,
            type=type_name(field.annotation),
            default=_render_default(default, field.annotation) if has_default else "required",
            constraints="; ".join(constraints),
            description=(field.description or "").strip(),
            owner=model,
            name=name,
        )
        for child_path, child in _nested_models(field.annotation, path):
            if child_path != path and child is not model and child.__doc__:
                yield FieldRow(
                    path=child_path,
                    type="object",
                    default="",
                    constraints="",
                    description=inspect.cleandoc(child.__doc__).split("\n\n")[0].replace("\n", " "),
                    owner=child,
                    name="",
                )
            yield from field_rows(child, child_path, default if isinstance(default, child) else None)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_page(page: ReferencePage) -> str:
    """The Markdown of one reference page."""
    lines = [
        f"# {page.title}",
        "",
        "<!-- Generated by `curbwatch schema export` from the pydantic models; do not edit. -->",
        "",
        page.intro.strip(),
        "",
    ]
    first_column = "variable" if page.env_prefix is not None else "path"
    lines += [f"| {first_column} | type | default | constraints | description |", "|---|---|---|---|---|"]
    for row in field_rows(page.model):
        name = f"{page.env_prefix}{row.path.upper()}" if page.env_prefix is not None else row.path
        description = row.description or (NO_DESCRIPTION if row.name else "")
        cells = [f"`{name}`", row.type, row.default, row.constraints, description]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def undescribed_fields(model: type[BaseModel]) -> list[str]:
    """``Model.field`` of every field without a description (a documentation defect)."""
    return sorted(
        {
            f"{row.owner.__module__}.{row.owner.__qualname__}.{row.name}"
            for row in field_rows(model)
            if row.name and not row.description
        }
    )
