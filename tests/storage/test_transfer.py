"""Export to NDJSON and import from it (motet.storage.transfer): a log moved
LMDB → LMDB and LMDB → PostgreSQL → LMDB answers reads byte for byte as
before, keeps positions, versions, times and command ids; bad files are
refused naming the line."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motet.engine import open_engine
from motet.engine.example import (
    DeleteUser,
    GetUserById,
    OrderPlaced,
    UpdateUser,
    UserCreated,
    UserDeleted,
    UserUpdated,
    app,
)
from motet.storage import Codec, LmdbStore, MemoryStore
from motet.storage.errors import ExportFileError, StoreNotEmpty
from motet.storage.records import Append, Metadata
from motet.storage.transfer import (
    EXPORT_FORMAT,
    export_events,
    import_events,
    import_into_directory,
)
from tests.support.commands import create_user, place_order
from tests.support.logs import read_everything
from tests.support.postgres import Cluster, new_store
from tests.support.transfer import CODEC, export_bytes, read_answers


async def _fill(path: Path) -> dict[str, Any]:
    """Run example commands (with command ids and a causal chain) into a store
    at ``path``; return their Acks by command id."""
    acks: dict[str, Any] = {}
    async with open_engine(path, app) as engine:
        for i in range(5):
            acks[f"create-{i}"] = await engine.send(
                create_user(f"u{i}", city="Oslo"), command_id=f"create-{i}", correlation_id="c"
            )
        for n in range(30):
            acks[f"order-{n}"] = await engine.send(
                place_order(f"u{n % 5}", f"o{n}", n + 0.5),
                command_id=f"order-{n}",
                correlation_id=f"corr-{n}",
                causation_id=f"create-{n % 5}",
            )
        await engine.send(UpdateUser(user_id="u1", city="Bergen"))
        await engine.send(DeleteUser(user_id="u4"))
    return acks


@pytest.fixture
async def filled(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    acks = await _fill(tmp_path / "source")
    return tmp_path / "source", acks


def _same_log(source: Any, copy: Any) -> None:
    assert copy.head_position == source.head_position
    assert copy.streams() == source.streams()
    assert read_answers(copy) == read_answers(source)
    ours, theirs = read_everything(copy), read_everything(source)
    assert [(e.position, e.stream, e.version, e.type, e.metadata) for e in ours] == [
        (e.position, e.stream, e.version, e.type, e.metadata) for e in theirs
    ]
    # Times to the microsecond, as every answer shows them.
    assert [round(e.timestamp, 6) for e in ours] == [round(e.timestamp, 6) for e in theirs]


async def test_an_lmdb_log_moved_to_lmdb_answers_reads_byte_for_byte_as_before(
    filled: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    source_path, acks = filled
    source = LmdbStore(source_path, readonly=True)
    exported = export_bytes(source, batch_size=7)

    summary = import_into_directory(io.BytesIO(exported), tmp_path / "copy", CODEC, batch_size=4)

    copy = LmdbStore(tmp_path / "copy", readonly=True)
    try:
        _same_log(source, copy)
        assert summary.events == summary.last_position == source.head_position == 37
        for command_id, ack in acks.items():
            assert copy.get_ack(command_id) == ack
        assert export_bytes(copy) == exported
    finally:
        copy.close()
        source.close()
    assert sorted(os.listdir(tmp_path)) == ["copy", "source"]  # no staging left


async def test_an_imported_store_answers_a_retried_command_with_its_original_ack(
    filled: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    source_path, acks = filled
    source = LmdbStore(source_path, readonly=True)
    exported = export_bytes(source)
    source.close()
    import_into_directory(io.BytesIO(exported), tmp_path / "copy", CODEC)

    async with open_engine(tmp_path / "copy", app) as engine:
        retried = await engine.send(place_order("u3", "o3", 3.5), command_id="order-3")
        fresh = await engine.send(place_order("u3", "o-new", 1.0), command_id="order-new")
        user = await engine.ask(GetUserById(user_id="u3"), after=fresh.position)

    assert retried == acks["order-3"]
    assert fresh.position == 38
    assert fresh.version == 1 + 6 + 1  # created, six orders, the new one
    assert user.order_count == 7
    assert user.city == "Oslo"


async def test_an_lmdb_log_moved_through_postgresql_and_back_is_unchanged(
    filled: tuple[Path, dict[str, Any]], tmp_path: Path, postgres_cluster: Cluster
) -> None:
    source_path, acks = filled
    source = LmdbStore(source_path, readonly=True)
    exported = export_bytes(source)
    postgres = new_store(postgres_cluster)
    try:
        import_events(io.BytesIO(exported), postgres, CODEC, batch_size=10)
        _same_log(source, postgres)
        assert postgres.get_ack("order-7") == acks["order-7"]
        through_postgres = export_bytes(postgres, batch_size=3)
    finally:
        postgres.close()
    assert through_postgres == exported

    import_into_directory(io.BytesIO(through_postgres), tmp_path / "back", CODEC)
    back = LmdbStore(tmp_path / "back", readonly=True)
    try:
        _same_log(source, back)
        assert back.get_ack("create-2") == acks["create-2"]
    finally:
        back.close()
        source.close()


def test_an_export_of_an_empty_store_is_its_summary_alone() -> None:
    exported = export_bytes(MemoryStore())

    empty = hashlib.sha256(b"").hexdigest()
    assert json.loads(exported) == {
        "motet_export": EXPORT_FORMAT,
        "events": 0,
        "last_position": 0,
        "sha256": empty,
    }
    store = MemoryStore()
    assert import_events(io.BytesIO(exported), store, CODEC).events == 0
    assert store.head_position == 0


def test_export_reports_progress_per_batch_and_stops_at_the_head_it_began_with() -> None:
    store = _memory_log(10)
    seen: list[tuple[int, float | None]] = []

    def progress(done: int, fraction: float | None) -> None:
        seen.append((done, fraction))
        # A commit made during the export is not part of it.
        late = CODEC.encode_event(UserDeleted(user_id="late"))
        store.append_batch([Append("User-late", store.stream_version("User-late"), [late])], 0.0)

    exported = export_bytes(store, batch_size=4, progress=progress)

    assert seen == [(4, 0.4), (8, 0.8), (10, 1.0)]
    assert exported.count(b"\n") == 11


# -- refusing bad files ---------------------------------------------------------------------


def _memory_log(count: int) -> MemoryStore:
    """A log of ``count`` example events: one user, then orders (command ids o0, o1 ...)."""
    store = MemoryStore()
    encode = CODEC.encode_event
    created = encode(
        UserCreated(user_id="u1", name="N", email="u1@example.org", password_hash="h", city=None)
    )
    store.append_batch([Append("User-u1", 0, [created], Metadata("create"))], 1_700_000_000.0)
    for n in range(1, count):
        order = OrderPlaced(user_id="u1", order_id=f"o{n}", amount=1.0, at=1.0)
        store.append_batch(
            [Append("User-u1", n, [encode(order)], Metadata(f"o{n}"))], 1_700_000_000.0 + n
        )
    return store


def _lines(count: int = 4) -> list[bytes]:
    return export_bytes(_memory_log(count)).splitlines(keepends=True)


def _resummarized(events: list[bytes]) -> bytes:
    """``events`` with a summary line that matches them (as a crafted file has)."""
    last = json.loads(events[-1])["position"] if events else 0
    summary = {
        "motet_export": EXPORT_FORMAT,
        "events": len(events),
        "last_position": last,
        "sha256": hashlib.sha256(b"".join(events)).hexdigest(),
    }
    return b"".join(events) + json.dumps(summary).encode() + b"\n"


def _edited(line: bytes, **fields: Any) -> bytes:
    value = json.loads(line)
    value.update(fields)
    return json.dumps(value).encode() + b"\n"


def _data_edited(line: bytes, **fields: Any) -> bytes:
    value = json.loads(line)
    value["data"].update(fields)
    return json.dumps(value).encode() + b"\n"


def test_the_helpers_make_a_file_that_imports() -> None:
    events = _lines()[:-1]
    store = MemoryStore()

    import_events(io.BytesIO(_resummarized(events)), store, CODEC)

    assert store.head_position == 4


class TestBadFiles:
    """Each bad file is refused with the number of its first bad line."""

    CASES: ClassVar[dict[str, Any]] = {
        "not JSON": (
            lambda e, s: _resummarized([e[0], b'{"position": 2, oops\n', *e[2:]]),
            2,
            r"line 2 is not JSON: ",
        ),
        "not an event": (
            lambda e, s: _resummarized([e[0], b'{"stream": "User-u1"}\n', *e[2:]]),
            2,
            r"line 2 is not an export event: Object missing required field `position`",
        ),
        "a gap": (
            lambda e, s: _resummarized([e[0], e[2], e[3]]),
            2,
            r"line 2: position 3 follows position 1 \(a gap no removed line declares; positions ",
        ),
        "out of order": (
            lambda e, s: _resummarized([e[0], e[1], e[1], e[3]]),
            3,
            r"line 3: position 2 follows position 2 \(out of order",
        ),
        "a version that skips": (
            lambda e, s: _resummarized([e[0], e[1], _edited(e[2], version=5), e[3]]),
            3,
            r"line 3: the record at position 3 is version 5 of stream 'User-u1', "
            r"which is at version 2: versions must be contiguous",
        ),
        "a command id used twice": (
            lambda e, s: _resummarized([*e[:3], _edited(e[3], metadata={"command_id": "o1"})]),
            4,
            r"line 4: .*carries command_id 'o1', already acknowledged at position 2",
        ),
        "an unknown event type": (
            lambda e, s: _resummarized([e[0], _edited(e[1], type="OrderShipped"), *e[2:]]),
            2,
            r"line 2: unknown event type 'OrderShipped' for this app \(it knows: OrderPlaced, "
            r"SubjectForgotten, UserCreated, UserDeleted, UserUpdated\); import with the app "
            r"that wrote it",
        ),
        "data not matching its type": (
            lambda e, s: _resummarized([e[0], e[1], _data_edited(e[2], amount="lots"), e[3]]),
            3,
            r"line 3: OrderPlaced: Expected `float`, got `str` - at `\$.amount`",
        ),
        "an event version newer than the app": (
            lambda e, s: _resummarized([e[0], _edited(e[1], event_version=9), *e[2:]]),
            2,
            r"line 2: OrderPlaced: event 'OrderPlaced' has version 9, newer than this app's "
            r"version 1",
        ),
        "a time without a zone": (
            lambda e, s: _resummarized([_edited(e[0], time="2024-01-01T00:00:00"), *e[1:]]),
            1,
            r"line 1 is not an export event: Expected `datetime` with a timezone component",
        ),
        "an empty stream id": (
            lambda e, s: _resummarized([_edited(e[0], stream=""), *e[1:]]),
            1,
            r"line 1: UserCreated: stream must be a non-empty string",
        ),
        "no summary line": (
            lambda e, s: b"".join(e),
            4,
            r"the file ends at line 4 without its summary line: it is cut short",
        ),
        "a summary that counts otherwise": (
            lambda e, s: b"".join(e[:3]) + s,
            4,
            r"line 4 \(the summary\) says 4 events up to position 4, 0 removed positions and "
            r"0 deletion records, but the file holds 3 up to 3, 0 and 0: lines are missing",
        ),
        "an edited line": (
            lambda e, s: b"".join([e[0], _data_edited(e[1], amount=1000.0), *e[2:]]) + s,
            5,
            r"line 5 \(the summary\): the SHA-256 of the lines before it is [0-9a-f]{64}, the "
            r"summary says [0-9a-f]{64}: the file was changed after it was exported",
        ),
        "lines after the summary": (
            lambda e, s: b"".join(e) + s + e[0],
            6,
            r"line 6: the file goes on after its summary line \(line 5\)",
        ),
        "another format": (
            lambda e, s: b"".join(e) + s.replace(b"motet-export/1", b"motet-export/7"),
            5,
            r"the file is in format 'motet-export/7'; this version reads 'motet-export/1'",
        ),
    }

    @pytest.mark.parametrize("case", sorted(CASES))
    def test_is_refused_naming_the_line(self, case: str) -> None:
        make, line, message = self.CASES[case]
        *events, summary = _lines()

        with pytest.raises(ExportFileError, match=message) as caught:
            import_events(io.BytesIO(make(events, summary)), MemoryStore(), CODEC, batch_size=2)

        assert caught.value.line == line

    def test_a_failed_import_into_a_directory_leaves_nothing_behind(self, tmp_path: Path) -> None:
        lines = _lines(30)
        bad = _resummarized([*lines[:20], _edited(lines[20], version=99), *lines[21:30]])

        with pytest.raises(ExportFileError, match="line 21: "):
            import_into_directory(io.BytesIO(bad), tmp_path / "target", CODEC, batch_size=5)

        assert os.listdir(tmp_path) == []

    def test_an_overlong_line_is_refused_without_reading_it_whole(self) -> None:
        from motet.storage import transfer

        huge = b'{"position": 1, "stream": "' + b"x" * (transfer.MAX_LINE_BYTES + 10)

        with pytest.raises(ExportFileError, match=r"line 1 is longer than 16,777,216 bytes"):
            import_events(io.BytesIO(huge), MemoryStore(), CODEC)


def test_an_import_into_a_store_that_holds_events_is_refused() -> None:
    target = _memory_log(1)

    with pytest.raises(StoreNotEmpty, match=r"not empty \(its log is at position 1\)"):
        import_events(io.BytesIO(b"".join(_lines())), target, CODEC)

    assert target.head_position == 1


def test_an_import_into_a_directory_that_holds_anything_is_refused(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "notes.txt").write_text("mine")

    with pytest.raises(StoreNotEmpty, match=r"target is not empty \(found: notes.txt\)"):
        import_into_directory(io.BytesIO(b"".join(_lines())), tmp_path / "target", CODEC)

    assert os.listdir(tmp_path / "target") == ["notes.txt"]


# -- an export from an older app ----------------------------------------------------------------


class RenamedV1(msgspec.Struct, tag="Renamed", frozen=True, kw_only=True):
    name: str


class RenamedV2(msgspec.Struct, tag="Renamed", frozen=True, kw_only=True):
    event_version: ClassVar[int] = 2
    first: str
    last: str


def _split(payload: dict[str, Any]) -> dict[str, Any]:
    first, _, last = payload.pop("name").partition(" ")
    return {**payload, "first": first, "last": last}


def test_an_export_of_an_older_event_version_is_upcast_on_import() -> None:
    old = MemoryStore()
    old_codec = Codec([RenamedV1])
    old.append_batch(
        [Append("P-1", 0, [old_codec.encode_event(RenamedV1(name="Ada Lovelace"))])], 1.0
    )
    exported = _export_with(old, old_codec)
    assert b'"event_version":1' in exported
    new_codec = Codec([RenamedV2], {("Renamed", 1): _split})
    store = MemoryStore()

    import_events(io.BytesIO(exported), store, new_codec)

    (event,) = store.read_all()
    assert event.event_version == 2
    assert new_codec.decode_event(event) == RenamedV2(first="Ada", last="Lovelace")


def _export_with(store: Any, codec: Codec) -> bytes:
    out = io.BytesIO()
    export_events(store, codec, out)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.text(
                st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), min_size=1
            ),
            st.one_of(st.none(), st.text(st.characters(exclude_categories=["Cs"]))),
            st.one_of(st.none(), st.text(st.characters(exclude_categories=["Cs"]), max_size=5)),
            st.floats(min_value=0, max_value=4e9, allow_nan=False),
        ),
        max_size=12,
    )
)
def test_any_log_round_trips_through_an_export(
    rows: list[tuple[str, str | None, str | None, float]],
) -> None:
    source = MemoryStore()
    for n, (user_id, city, correlation_id, timestamp) in enumerate(rows):
        event = CODEC.encode_event(UserUpdated(user_id=user_id, city=city))
        stream = f"User-{user_id}"
        metadata = Metadata(f"cmd-{n}", correlation_id, None)
        source.append_batch(
            [Append(stream, source.stream_version(stream), [event], metadata)], timestamp
        )
    exported = export_bytes(source)
    copy = MemoryStore()

    import_events(io.BytesIO(exported), copy, CODEC, batch_size=5)

    assert export_bytes(copy) == exported
    assert read_answers(copy) == read_answers(source)
    # The copy's personal fields are encrypted (the source's were written in
    # clear, past the writer): they decode the same.
    ours, theirs = CODEC.with_keys(copy), CODEC.with_keys(source)
    assert [
        (e.stream, e.version, e.metadata, ours.decode_event(e)) for e in read_everything(copy)
    ] == [
        (e.stream, e.version, e.metadata, theirs.decode_event(e)) for e in read_everything(source)
    ]
    for n in range(len(rows)):
        assert copy.get_ack(f"cmd-{n}") == source.get_ack(f"cmd-{n}")
