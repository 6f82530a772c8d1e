"""The OpenAPI 3.1 document of the HTTP API, generated from the app's types.

Every schema comes from ``msgspec.json.schema_components`` over the msgspec
types themselves: the app's commands and queries (request bodies), the query
handlers' declared return types (responses; a handler without one answers
"any JSON"), and the wire's own reply structs (acks, events, errors,
status). Nothing is written by hand but the paths and their parameters, so a
new command or field appears in the document without anyone editing it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

import msgspec

from motet.storage.personal import Forgotten

from ..app import App
from ..core import EngineStatus
from .protocol import MAX_READ_LIMIT, AckBody, DeletionBody, ErrorBody, ReadBody, WireEvent
from .typed import result_type

__all__ = ["OPENAPI_VERSION", "openapi_document"]

OPENAPI_VERSION: Final = "3.1.0"
"""The OpenAPI version of the document (its schemas are JSON Schema 2020-12,
which is what msgspec generates)."""

_REF: Final = "#/components/schemas/{name}"

# The wire's own reply shapes, by the names the document gives them.
_WIRE_TYPES: Final[dict[str, Any]] = {
    "Ack": AckBody,
    "ReadResult": ReadBody,
    "StreamDeletion": DeletionBody,
    "Event": WireEvent,
    "ErrorBody": ErrorBody,
    "EngineStatus": EngineStatus,
    "Forgotten": Forgotten,
}

_ERRORS: Final = {
    "400": "bad_request or invalid: the request or its data does not fit the schema",
    "401": "unauthorized: the token is missing or wrong",
    "404": "not_found or unknown_type",
    "409": "conflict: the stream is not at the If-Match version",
    "413": "too_large: the body is over the server's limit",
    "422": "rejected: the domain refused the command",
    "429": "overloaded: retry later",
    "500": "internal: the server failed",
    "503": "unavailable: this node cannot serve it now",
    "504": "timeout: the projection did not reach `after` in time",
}


def _package_version() -> str:
    try:
        return version("motet")
    except PackageNotFoundError:  # pragma: no cover - a checkout without install
        return "0"


def _tag_field(cls: type) -> str | None:
    info = msgspec.inspect.type_info(cls)
    return getattr(info, "tag_field", None) if getattr(info, "tag", None) is not None else None


def _optional_tags(components: dict[str, Any], classes: Iterable[type]) -> None:
    """A message decoded on its own (the HTTP body names its type in the
    path) may leave out its tag field; msgspec's schema lists it as required,
    which holds for tagged unions only."""
    for cls in classes:
        field = _tag_field(cls)
        schema = components.get(cls.__name__)
        if field is None or schema is None:
            continue
        required = [name for name in schema.get("required", []) if name != field]
        if required:
            schema["required"] = required
        else:
            schema.pop("required", None)


def _error_responses(*codes: str) -> dict[str, Any]:
    return {
        code: {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query_parameters(cls: type) -> list[dict[str, Any]]:
    """The data fields of a query type, as GET parameters."""
    info = msgspec.inspect.type_info(cls)
    schemas = msgspec.json.schema(cls)
    properties = schemas.get("properties", {})
    if "$defs" in schemas:  # a self-referencing struct: take its definition
        properties = next(iter(schemas["$defs"].values())).get("properties", properties)
    tag = _tag_field(cls)
    parameters = []
    for field in getattr(info, "fields", ()):
        if field.encode_name == tag or field.encode_name in ("after", "timeout"):
            continue
        parameters.append(
            {
                "name": field.encode_name,
                "in": "query",
                "required": field.required,
                "schema": properties.get(field.encode_name, {}),
            }
        )
    return parameters


_AFTER: Final = {
    "name": "after",
    "in": "query",
    "description": "wait until the projection has applied this position (read your writes)",
    "schema": {"type": "integer", "minimum": 0},
}
_TIMEOUT: Final = {
    "name": "timeout",
    "in": "query",
    "description": "seconds to wait for `after` (default 5)",
    "schema": {"type": "number", "minimum": 0},
}


def openapi_document(app: App, *, title: str = "Motet") -> dict[str, Any]:
    """The OpenAPI document of the HTTP API serving ``app``: one path per
    command (``POST /commands/{Type}``) and per query (``GET`` and ``POST
    /queries/{Type}``), each with its generated schema, and the fixed routes.
    """
    commands = app.command_types()
    queries = app.query_types()
    handlers = {query.type: query.handler for query in app.queries}
    results = {tag: result_type(handlers[cls]) for tag, cls in queries.items()}

    types: list[Any] = [*commands.values(), *queries.values(), *results.values()]
    types += _WIRE_TYPES.values()
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(id, types), refs, strict=True))
    _optional_tags(components, [*commands.values(), *queries.values()])
    for name, cls in _WIRE_TYPES.items():
        # The wire's structs are private names; give them the document's.
        if cls.__name__ != name and cls.__name__ in components:
            components[name] = components.pop(cls.__name__)
            components[name]["title"] = name
    _rename_refs(components, {cls.__name__: name for name, cls in _WIRE_TYPES.items()})
    components["Error"] = {
        "type": "object",
        "properties": {"error": {"$ref": _REF.format(name="ErrorBody")}},
        "required": ["error"],
    }

    paths: dict[str, Any] = {}
    for tag, cls in sorted(commands.items()):
        paths[f"/commands/{tag}"] = {
            "post": {
                "operationId": f"command_{tag}",
                "summary": _summary(cls),
                "tags": ["commands"],
                "parameters": [
                    _header("Idempotency-Key", "the command id: a retry returns the first Ack"),
                    _header("If-Match", 'the expected stream version, e.g. "3"'),
                    _header("Correlation-Id", "stored in the events' metadata"),
                    _header("Causation-Id", "stored in the events' metadata"),
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema_of[id(cls)]}},
                },
                "responses": {
                    "200": _json(_ref("Ack"), "the command's events are committed"),
                    **_error_responses(
                        "400", "401", "404", "409", "413", "422", "429", "500", "503"
                    ),
                },
            }
        }
    for tag, cls in sorted(queries.items()):
        result = schema_of[id(results[tag])] if results[tag] is not Any else {}
        answers = {
            "200": _json(result, "the query's result"),
            **_error_responses("400", "401", "404", "413", "500", "503", "504"),
        }
        paths[f"/queries/{tag}"] = {
            "get": {
                "operationId": f"query_{tag}_get",
                "summary": _summary(cls),
                "tags": ["queries"],
                "parameters": [*_query_parameters(cls), _AFTER, _TIMEOUT],
                "responses": answers,
            },
            "post": {
                "operationId": f"query_{tag}",
                "summary": _summary(cls),
                "tags": ["queries"],
                "parameters": [_AFTER, _TIMEOUT],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema_of[id(cls)]}},
                },
                "responses": answers,
            },
        }
    paths.update(_fixed_paths())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": _package_version(),
            "description": "Motet's HTTP API: commands, queries, streams, live events.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }


def _rename_refs(node: Any, names: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name in names:
                node["$ref"] = _REF.format(name=names[name])
        for value in node.values():
            _rename_refs(value, names)
    elif isinstance(node, list):
        for value in node:
            _rename_refs(value, names)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or cls.__name__
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "description": description, "schema": {"type": "string"}}


def _fixed_paths() -> dict[str, Any]:
    position = {"type": "integer", "minimum": 0}
    text = {"text/plain": {"schema": {"type": "string"}}}
    projection = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/streams/{stream}": {
            "get": {
                "operationId": "read_stream",
                "summary": "The events of one stream, oldest first, page by page.",
                "tags": ["events"],
                "parameters": [
                    {
                        "name": "stream",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "from",
                        "in": "query",
                        "description": "a version: events after it (exclusive; 0 = all)",
                        "schema": position,
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_READ_LIMIT},
                    },
                ],
                "responses": {
                    "200": _json(_ref("ReadResult"), "the events and `next`, the last version"),
                    **_error_responses("400", "401"),
                },
            },
            "delete": {
                "operationId": "delete_stream",
                "summary": "Delete a stream: a tombstone (its commands are refused), "
                "or with hard=true its events too (the server must allow it).",
                "tags": ["events"],
                "parameters": [
                    {
                        "name": "stream",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "hard",
                        "in": "query",
                        "description": "remove the stream's events as well",
                        "schema": {"type": "boolean"},
                    },
                ],
                "responses": {
                    "200": _json(_ref("StreamDeletion"), "the stream's deletion record"),
                    **_error_responses("400", "401", "404"),
                },
            },
        },
        "/events": {
            "get": {
                "operationId": "subscribe",
                "summary": "Every event after a position as Server-Sent Events, then live.",
                "description": (
                    "`id:` is the event's position and `data:` the event as JSON (the "
                    "`Event` schema); the `Last-Event-ID` header resumes after that position. "
                    "When the server stops the stream ends with `event: error`."
                ),
                "tags": ["events"],
                "parameters": [
                    {
                        "name": "from",
                        "in": "query",
                        "description": "a position: events after it (exclusive)",
                        "schema": position,
                    },
                    _header("Last-Event-ID", "resume after this position (overrides `from`)"),
                ],
                "responses": {
                    "200": {
                        "description": "an event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_error_responses("400", "401"),
                },
            }
        },
        "/status": {
            "get": {
                "operationId": "status",
                "summary": "The log's head, each projection's position, lag and state.",
                "tags": ["engine"],
                "responses": {
                    "200": _json(_ref("EngineStatus"), "the engine's status"),
                    **_error_responses("401"),
                },
            }
        },
        "/forget/{subject}": {
            "post": {
                "operationId": "forget",
                "summary": (
                    "Erase a data subject's personal data (crypto-shredding): its "
                    "personal fields read as redacted from now on. Full-access token only."
                ),
                "tags": ["engine"],
                "parameters": [
                    {
                        "name": "subject",
                        "in": "path",
                        "required": True,
                        "description": "the data subject, e.g. a user id (percent-encoded)",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json(_ref("Forgotten"), "what was erased"),
                    **_error_responses("400", "401", "503"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics in the text exposition format.",
                "tags": ["engine"],
                "responses": {
                    "200": {"description": "the metrics", "content": text},
                    **_error_responses("401", "404"),
                },
            }
        },
        "/projections": {
            "get": {
                "operationId": "projections",
                "summary": "The head and every projection's status, with `paused`.",
                "tags": ["projections"],
                "responses": {
                    "200": _json({"type": "object"}, "the projections"),
                    **_error_responses("401"),
                },
            }
        },
        "/projections/{name}": {
            "get": {
                "operationId": "projection",
                "summary": "One projection's status, with `paused`.",
                "tags": ["projections"],
                "parameters": [projection],
                "responses": {
                    "200": _json({"type": "object"}, "the projection's status"),
                    **_error_responses("401", "404"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "tags": ["engine"],
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
            }
        },
    }
    for action, summary in (
        ("pause", "Stop applying events until resumed."),
        ("resume", "Undo pause."),
        ("retry", "Try the failed event again."),
        ("skip", "Give up on the failed event and go on after it."),
        ("rebuild", "Fold a fresh model from position 0, then swap it in."),
    ):
        paths[f"/projections/{{name}}/{action}"] = {
            "post": {
                "operationId": f"projection_{action}",
                "summary": summary,
                "tags": ["projections"],
                "parameters": [projection],
                "responses": {
                    "200": _json({"type": "object"}, "the projection's status after it"),
                    **_error_responses("401", "404", "500"),
                },
            }
        }
    return paths
