"""Exports to bytes and the protocol's ``read`` answers of a whole store,
for the export and import tests (the example app's codec)."""

from __future__ import annotations

import io
from typing import Any

from motet.engine.example import app
from motet.engine.net.protocol import ReplyEncoder
from motet.storage.transfer import export_events

CODEC = app.codec()


def export_bytes(store: Any, **options: Any) -> bytes:
    """The whole NDJSON export of ``store``."""
    out = io.BytesIO()
    export_events(store, CODEC, out, **options)
    return out.getvalue()


def read_answers(store: Any) -> list[bytes]:
    """What the protocol's ``read`` answers for every stream, as sent."""
    encoder = ReplyEncoder()
    codec = CODEC.with_keys(store)
    return [
        encoder.read(1, [codec.decode_record(e) for e in store.read_stream(stream)], 0)
        for stream, _ in store.streams()
    ]
