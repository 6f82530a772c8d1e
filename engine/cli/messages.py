"""The server's message types as ``motet client`` sees them: field names,
types and defaults read from the JSON Schemas of the ``status`` reply
(``schemas``, docs/design.md), used to read short-form values by the field's
type, to describe a type in ``help TYPE`` and to complete field names.

A server that sends no schemas (an older one) gets an empty
:class:`Messages`: every value is then read by its look, as JSON when it
parses, else as text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Field", "Message", "Messages", "json_look", "plain_text"]

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NAMES = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "null": "null",
    "array": "list",
    "object": "object",
}
# What to write, by JSON type, for the error that says a value does not fit.
_WANTED = {
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a JSON array such as [1, 2]",
    "object": 'a JSON object such as {"a": 1}',
    "null": "null",
}
# ``literal``, :role:`~module.Name` and :role:`text` as people read them.
_REST_LITERAL = re.compile(r"``(.+?)``")
_REST_ROLE = re.compile(r":[\w:]+:`~?(?:[\w.]*\.)?([^`]+)`")


def plain_text(text: str) -> str:
    """``text`` with its reST markup (literals, roles) taken out."""
    return _REST_ROLE.sub(r"\1", _REST_LITERAL.sub(r"\1", text))


def json_look(text: str) -> Any:
    """A value read by its look: JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Field:
    """One field of a message: its name, JSON Schema and default (if any)."""

    name: str
    schema: Mapping[str, Any]
    required: bool
    defs: Mapping[str, Any]

    @property
    def json_types(self) -> list[str] | None:
        """The JSON types the field takes (``None``: not known, read by look)."""
        return _json_types(self.schema, self.defs)

    @property
    def type_name(self) -> str:
        """The field's type as people write it: ``str``, ``int | null``, ``list[int]``."""
        return _type_name(self.schema, self.defs)

    def placeholder(self) -> str:
        """What ``NAME=...`` stands for in a usage line: ``STR``, ``INT``, ``kg|piece``."""
        enum = _resolve(self.schema, self.defs).get("enum")
        if enum is not None:
            return "|".join(str(value) for value in enum)
        return self.type_name.upper().replace(" | NULL", "").replace(" | ", "|")

    def read(self, text: str) -> Any:
        """The value of ``text`` for this field; ``ValueError`` saying what to
        write when it cannot be one."""
        enum = _resolve(self.schema, self.defs).get("enum")
        types = self.json_types
        if enum is not None and all(isinstance(value, str) for value in enum):
            if text not in enum:
                choices = ", ".join(repr(value) for value in enum)
                raise ValueError(f"{self.name} must be one of {choices}, got {text!r}")
            return text
        if types is None:
            return json_look(text)
        if "null" in types and text == "null":
            return None
        if "string" in types:
            return text
        if "boolean" in types and text in ("true", "false"):
            return text == "true"
        if "integer" in types and _INTEGER.fullmatch(text):
            return int(text)
        if "number" in types:
            value = json_look(text)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return value
        if "array" in types or "object" in types:
            value = json_look(text)
            if isinstance(value, list) and "array" in types:
                return value
            if isinstance(value, dict) and "object" in types:
                return value
        wanted = " or ".join(_WANTED.get(name, name) for name in types)
        raise ValueError(f"{self.name} must be {wanted}, got {text!r}")


@dataclass(frozen=True)
class Message:
    """One command or query type: its tag, kind, description and fields."""

    tag: str
    kind: str  # "command" or "query"
    description: str
    fields: dict[str, Field]

    def usage(self) -> str:
        """``Tag name=STR [limit=INT]``: the short form with every field."""
        words = [self.tag]
        for field in self.fields.values():
            word = f"{field.name}={field.placeholder()}"
            words.append(word if field.required else f"[{word}]")
        return " ".join(words)


class Messages:
    """The message types of one server, by tag (empty when it sent no schemas)."""

    def __init__(
        self,
        schemas: Mapping[str, Any],
        commands: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        defs = schemas.get("$defs") or {}
        self.by_tag: dict[str, Message] = {}
        for tag, ref in (schemas.get("messages") or {}).items():
            schema = _resolve(ref, defs)
            self.by_tag[tag] = Message(
                tag=tag,
                kind="command" if tag in commands else "query",
                description=plain_text(str(schema.get("description") or "")),
                fields=_fields(tag, schema, defs),
            )

    def __bool__(self) -> bool:
        return bool(self.by_tag)

    def get(self, tag: str) -> Message | None:
        """The message type ``tag``, or ``None`` when the server did not describe it."""
        return self.by_tag.get(tag)


def _fields(tag: str, schema: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Field]:
    required = set(schema.get("required") or ())
    fields = {}
    for name, field_schema in (schema.get("properties") or {}).items():
        if field_schema == {"enum": [tag]}:  # the tag field: ``type`` names it
            continue
        fields[name] = Field(name, field_schema, name in required, defs)
    return fields


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        found = defs.get(ref.removeprefix("#/$defs/"))
        return found if isinstance(found, Mapping) else {}
    return schema


def _json_types(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[str] | None:
    schema = _resolve(schema, defs)
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [str(name) for name in kind]
    if "enum" in schema:
        found = []
        for value in schema["enum"]:
            name = _type_of_value(value)
            if name not in found:
                found.append(name)
        return found
    members = schema.get("anyOf") or schema.get("oneOf")
    if members:
        found = []
        for member in members:
            names = _json_types(member, defs)
            if names is None:
                return None
            found.extend(name for name in names if name not in found)
        return found
    return None


def _type_of_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _type_name(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    members = schema.get("anyOf") or schema.get("oneOf")
    if members:
        return " | ".join(_type_name(member, defs) for member in members)
    kind = schema.get("type")
    if kind == "string" and schema.get("format") == "date-time":
        return "datetime"
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        return f"list[{_type_name(schema['items'], defs)}]"
    if isinstance(kind, list):
        return " | ".join(_NAMES.get(str(name), str(name)) for name in kind)
    if isinstance(kind, str):
        return _NAMES.get(kind, kind)
    return "any"
