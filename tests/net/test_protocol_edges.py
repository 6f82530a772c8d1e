"""Edges of the line protocol's requests and error replies: keys given twice,
a full disk (retry later), and list queries over the wire."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from motet.engine import Engine
from motet.engine.example import app
from motet.engine.net.protocol import BadRequest, PingOp, ReplyEncoder, RequestDecoder
from motet.engine.net.server import Server
from motet.storage import Append, LmdbStore, NewEvent, StorageError
from motet.storage.errors import StorageFull, Unavailable, code_for, http_status_of, outcome_of
from tests.support.commands import create_user_request as create
from tests.support.peer import open_peer

decoder = RequestDecoder(app)


def refused(line: bytes) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        decoder.decode_request(line)
    return caught.value


# -- a key given twice ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (b'{"op":"ping","op":"status"}', "op"),
        (b'{"op":"status","op":"ping"}', "op"),
        (b'{"op":"ping","op":"bogus"}', "op"),
        (b'{"id":1,"op":"ping","id":2}', "id"),
        (b'{"op":"ping","\\u006fp":"ping"}', "op"),
        (b' { "op" : "read", "stream" : "User-a" , "stream":"User-b"}', "stream"),
        (
            b'{"id":7,"op":"command","type":"CreateUser","data":{},"data":{"user_id":"u"}}',
            "data",
        ),
    ],
)
def test_a_top_level_key_given_twice_is_a_bad_request_naming_it(line: bytes, key: str) -> None:
    error = refused(line)
    assert f"duplicate key {key!r}" in str(error)
    assert code_for(error) == "bad_request"


def test_the_request_id_is_echoed_unless_it_is_the_duplicate() -> None:
    assert refused(b'{"id":5,"op":"ping","op":"ping"}').request_id == 5
    assert refused(b'{"id":5,"op":"ping","id":5}').request_id is None


@pytest.mark.parametrize(
    "line",
    [
        b'{"op":"ping","id":"\\"op\\""}',
        b'{"op":"query","type":"GetUserById","data":{"user_id":"op","op":1,"data":{"op":2}}}',
        b'{"op":"query","type":"GetUserById","data":{"user_id":"\\u0075"}}',
        # Inside data, keys are the data's own business (its type decides).
        b'{"op":"query","type":"GetUserById","data":{"user_id":"a","user_id":"b"}}',
    ],
)
def test_keys_repeated_only_inside_strings_or_data_are_fine(line: bytes) -> None:
    decoder.decode_request(line)


def test_a_plain_request_still_decodes() -> None:
    assert decoder.decode_request(b'{"id":1,"op":"ping"}') == PingOp(id=1)


async def test_the_server_answers_a_duplicate_key_with_bad_request(server: Server) -> None:
    async with open_peer(server.port) as peer:
        reply = await peer.ask(b'{"id":3,"op":"ping","op":"status"}\n')
        assert reply["id"] == 3
        assert reply["ok"] is False
        assert reply["error"]["code"] == "bad_request"
        assert "duplicate key 'op'" in reply["error"]["message"]
        assert (await peer.ask({"id": 4, "op": "ping"}))["result"] == "pong"


# -- a full disk: unavailable, retry later ----------------------------------------------


def test_a_full_disk_is_unavailable_and_says_to_retry_later(full_disk: Path) -> None:
    store = LmdbStore(full_disk / "s")
    try:
        with pytest.raises(StorageError) as caught:
            for version in range(0, 100_000, 50):
                events = [NewEvent("E", 1, os.urandom(4000)) for _ in range(50)]
                store.append_batch([Append("A-1", version, events)], 1_700_000_000.0)
    finally:
        store.close()
    error = caught.value
    assert isinstance(error, StorageFull)
    assert isinstance(error, Unavailable)
    assert (code_for(error), outcome_of(error), http_status_of(error)) == (
        "unavailable",
        "unavailable",
        503,
    )
    assert str(error).startswith("the disk is full")
    assert "retry later" in str(error)
    reply = ReplyEncoder().exception(1, error)
    assert b'"code":"unavailable"' in reply
    assert b"retry later" in reply


# -- list queries are bounded on the wire ---------------------------------------------


async def test_users_by_city_pages_over_the_wire(server: Server, engine: Engine) -> None:
    async with open_peer(server.port) as peer:
        for n in range(5):
            request: dict[str, Any] = create(f"u{n}", city="Oslo")
            assert (await peer.ask({"id": n, **request}))["ok"] is True

        def query(**data: Any) -> dict[str, Any]:
            return {
                "id": "q",
                "op": "query",
                "type": "GetUsersByCity",
                "data": {"city": "Oslo", **data},
                "after": 5,
            }

        everyone = (await peer.ask(query()))["result"]
        assert [u["user_id"] for u in everyone] == ["u0", "u1", "u2", "u3", "u4"]
        page = (await peer.ask(query(limit=2, after_user_id="u1")))["result"]
        assert [u["user_id"] for u in page] == ["u2", "u3"]
        reply = await peer.ask(query(limit=5000))
        assert reply["error"]["code"] == "invalid"
        assert "limit must be between 1 and 1000, got 5000" in reply["error"]["message"]
