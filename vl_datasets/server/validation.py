"""Request parsing by FastAPI's and pydantic v2's rules, with their 422 error entries byte for byte.

The platform is a FastAPI app: a client (or a curl script) that works against it sends what
pydantic accepts, and reads the errors pydantic writes. Each function here mirrors one rule:

- a query value is the LAST one when a name repeats (Starlette's QueryParams);
- an absent required parameter is ``missing`` with ``input: null``; an empty value is not absent;
- a bool accepts pydantic's strings, ASCII case-insensitively, with no whitespace stripped;
- an enum accepts its exact values, and names them in the message (``ctx.expected`` too);
- a JSON body is decoded only when Content-Type is absent or JSON, as FastAPI does.

Error entries keep pydantic's key order: ``type, loc, msg, input[, ctx]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from email.message import Message
from typing import Any

Loc = list[str | int]
Errors = list[dict[str, Any]]

# pydantic-core's str_as_bool: these, compared ignoring ASCII case; "0" and "1" exactly.
TRUE_STRINGS = frozenset({"1", "t", "true", "y", "yes", "on"})
FALSE_STRINGS = frozenset({"0", "f", "false", "n", "no", "off"})
MISSING: Any = object()
"""Stands for an absent parameter or body, which differs from an empty one."""


class BodyParseError(Exception):
    """A body FastAPI cannot even decode as text: it answers 400, not 422."""

    detail = "There was an error parsing the body"


def entry(kind: str, loc: Loc, msg: str, value: Any, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of a 422 ``detail`` list, keys in pydantic's order."""
    error = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx is not None:
        error["ctx"] = ctx
    return error


def missing(loc: Loc) -> dict[str, Any]:
    return entry("missing", loc, "Field required", None)


def query_str(query: Mapping[str, str], name: str, errors: Errors, *, default: Any = MISSING) -> Any:
    """A string query parameter; absent and without ``default``: a ``missing`` entry, and None."""
    if name in query:
        return query[name]
    if default is MISSING:
        errors.append(missing(["query", name]))
        return None
    return default


def parse_bool(value: str) -> bool | None:
    """``value`` as pydantic parses a bool from a string; None when it does not."""
    if not value.isascii():  # eq_ignore_ascii_case: only ASCII letters fold
        return None
    folded = value.lower()
    if folded in TRUE_STRINGS:
        return True
    if folded in FALSE_STRINGS:
        return False
    return None


def query_bool(query: Mapping[str, str], name: str, errors: Errors, *, default: bool) -> bool:
    """An optional bool query parameter."""
    if name not in query:
        return default
    parsed = parse_bool(query[name])
    if parsed is None:
        errors.append(
            entry(
                "bool_parsing",
                ["query", name],
                "Input should be a valid boolean, unable to interpret input",
                query[name],
            )
        )
        return default
    return parsed


def expected_choices(choices: Sequence[str]) -> str:
    """pydantic's wording of an enum's values: ``'a', 'b' or 'c'``."""
    quoted = [repr(choice) for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def query_enum(query: Mapping[str, str], name: str, errors: Errors, choices: Sequence[str]) -> str | None:
    """A required enum query parameter: exact values only, as pydantic matches a str Enum."""
    value = query_str(query, name, errors)
    if value is None or value in choices:
        return value
    expected = expected_choices(choices)
    errors.append(entry("enum", ["query", name], f"Input should be {expected}", value, {"expected": expected}))
    return None


def json_body(content_type: str | None, body: bytes) -> tuple[Any, Errors]:
    """The request body as FastAPI hands it to validation, and the ``json_invalid`` entry if any.

    No body is MISSING; a non-JSON Content-Type leaves the raw text (which then fails validation);
    bytes that are not text raise BodyParseError.
    """
    if not body:
        return MISSING, []
    if content_type:
        message = Message()
        message["content-type"] = content_type
        subtype = message.get_content_subtype()
        if message.get_content_maintype() != "application" or not (subtype == "json" or subtype.endswith("+json")):
            try:
                return body.decode(), []  # FastAPI's encoder shows bytes as text in the error's input
            except UnicodeDecodeError:
                raise BodyParseError from None
    try:
        return json.loads(body), []
    except json.JSONDecodeError as exc:
        return MISSING, [entry("json_invalid", ["body", exc.pos], "JSON decode error", {}, {"error": exc.msg})]
    except (ValueError, RecursionError):  # not UTF-8/16/32, or nested past json.loads: unparsable
        raise BodyParseError from None


def string_list(value: Any, loc: Loc, errors: Errors) -> list[str] | None:
    """A ``list[str]`` field: not a list is ``list_type``; each non-string item is ``string_type``."""
    if not isinstance(value, list):
        errors.append(entry("list_type", loc, "Input should be a valid list", value))
        return None
    bad = [
        entry("string_type", [*loc, i], "Input should be a valid string", item)
        for i, item in enumerate(value)
        if not isinstance(item, str)
    ]
    errors.extend(bad)
    return None if bad else value


def model_fields(body: Any, errors: Errors) -> dict[str, Any] | None:
    """The body as a model's input: absent (or JSON ``null``, as FastAPI counts it) is ``missing``; not
    an object is ``model_attributes_type``."""
    if body is MISSING or body is None:
        errors.append(missing(["body"]))
        return None
    if not isinstance(body, dict):
        errors.append(
            entry(
                "model_attributes_type",
                ["body"],
                "Input should be a valid dictionary or object to extract fields from",
                body,
            )
        )
        return None
    return body


def value_error(loc: Loc, message: str, value: Any) -> dict[str, Any]:
    """A model validator's ValueError; FastAPI's encoder turns the exception in ``ctx`` into ``{}``."""
    return entry("value_error", loc, f"Value error, {message}", value, {"error": {}})
