"""Options that several ``curbwatch train`` commands share: where the server's verdicts and evidence
are, and which classes the dataset uses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from curbwatch.server.settings import ServerSettings

DatabaseUrlOption = Annotated[
    str | None, typer.Option(help="Server database; default CURBWATCH_DATABASE_URL.", show_default=False)
]
EvidenceDirOption = Annotated[
    Path | None,
    typer.Option(help="Server evidence store; default CURBWATCH_EVIDENCE_DIR.", show_default=False),
]
ClassesOption = Annotated[
    str | None,
    typer.Option(help="Class names in model output order, comma-separated.", show_default=False),
]
ClassesFromModelOption = Annotated[
    str | None,
    typer.Option(help="Take the class list from a model card, an ONNX model or a registry NAME[@VERSION]."),
]


class ClassOptionError(ValueError):
    """--classes and --model were both given."""


def server_settings(database_url: str | None, evidence_dir: Path | None) -> ServerSettings:
    """The server's settings (environment), with the database and evidence store the options name."""
    from curbwatch.server.settings import settings_from_options

    return settings_from_options(database_url=database_url, evidence_dir=evidence_dir)


def class_list(classes: str | None, model: str | None, registry: Path) -> list[str] | None:
    """The classes ``--classes`` lists or ``--model`` knows; None when neither is given.

    Raises:
        ClassOptionError: Both were given.
        RegistryError: The model is unknown or has no class names.
    """
    from curbwatch.training.registry import Registry, class_names_of

    if classes and model:
        raise ClassOptionError("give --classes or --model, not both")
    if model:
        return list(class_names_of(model, Registry(registry)))
    return [name.strip() for name in classes.split(",") if name.strip()] if classes else None
