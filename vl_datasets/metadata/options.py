"""Option groups: dataclasses whose fields are a dataset's keywords, each with its doc line.

A group owns its fields' defaults, their validation (``__post_init__``) and one doc line per field
(``field(default=..., metadata=doc("..."))``); the dataset's signatures and the options section of its docstring
are built from the groups (``keyword_parameters``, ``options_doc``), so an option added to a group
is one edit. ``CurationRules`` and ``TargetOptions`` live on the metadata side,
``vl_datasets.loading.image_reader.ImageOptions`` on the loading side.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any

import numpy as np

from ..errors import ConfigurationError

DOC = "doc"


def doc(text: str) -> dict[str, str]:
    """A group field's metadata: its doc line (``field(default=..., metadata=doc("..."))``)."""
    return {DOC: text}


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool, refused unless it is one: a str such as "false" is truthy, and taking
    it as a flag would do the opposite of what was meant."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigurationError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming the option."""
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {list(choices)}, got {value!r}.")


def group_fields(group: type) -> tuple[Field, ...]:
    """The fields of an option group, in order."""
    return fields(group)


def keyword_parameters(group: type) -> list[inspect.Parameter]:
    """The group's fields as keyword-only parameters, with their defaults and annotations."""
    return [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in group_fields(group)
    ]


def options_doc(title: str, group: type, *, keyword: str) -> str:
    """A docstring section: ``title``, the ``keyword`` that takes the whole group, then each field
    with its doc line and default."""
    whole = f"{keyword}: all of the options below as one ``{group.__name__}``, not to be combined with any of them"
    lines = [f"{title}:", _entry(f"{whole}; default None.")]
    for f in group_fields(group):
        lines.append(_entry(f"{f.name}: {f.metadata.get(DOC, '')}; default {_default_text(f)}."))
    return "\n".join(lines)


def _entry(text: str) -> str:
    return textwrap.fill(text, 100, initial_indent="    ", subsequent_indent="        ")


def _default_text(f: Field) -> str:
    return "none" if f.default is MISSING else repr(f.default)


def group_from(group: type, given: Any, options: dict[str, Any], keyword: str) -> Any:
    """The group a dataset uses: ``given`` (an instance passed as one keyword), or else one built
    from the single ``options``; a single option set beside ``given`` is an error, since one of
    the two would be ignored."""
    if given is None:
        return group(**options)
    if not isinstance(given, group):
        raise ConfigurationError(f"{keyword} must be a {group.__name__}, got {type(given).__name__}.")
    clashing = [f.name for f in group_fields(group) if options[f.name] is not f.default]
    if clashing:
        raise ConfigurationError(
            f"{keyword}= is given, and so is {', '.join(clashing)}: put "
            f"{'it' if len(clashing) == 1 else 'them'} inside the {group.__name__} instead."
        )
    return given


def take(names: Iterable[str], arguments: dict[str, Any]) -> dict[str, Any]:
    """The ``arguments`` named, removed from it."""
    return {name: arguments.pop(name) for name in list(names)}


def string_list(name: str, values: Iterable[str]) -> list[str]:
    """``values`` as a list, each checked to be a str; ``name`` names them in the error."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        # A lone str would otherwise pass as a collection of one-letter names.
        raise ConfigurationError(f'{name} must be a collection of strings such as ["a", "b"], got {values!r}.')
    copied = list(values)
    for value in copied:
        if not isinstance(value, str):
            raise ConfigurationError(f"{name} must hold strings only, got {value!r} ({type(value).__name__}).")
    return copied
