"""Export and import of a log with personal data, forgotten subjects, deleted
streams and removed events: personal fields travel in clear and land
encrypted under the target's keys, a forgotten subject stays forgotten,
removed positions and tombstones are recorded in the target as they were."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from motet.engine import StreamDeleted, open_engine
from motet.engine.cli import main
from motet.engine.example import DeleteUser, GetUserById, UpdateUser, app
from motet.storage import LmdbStore
from motet.storage.errors import ExportFileError
from motet.storage.transfer import import_events, import_into_directory
from motet.storage.verify import verify_store
from tests.support.commands import create_user, place_order
from tests.support.logs import read_everything
from tests.support.postgres import Cluster, new_store
from tests.support.transfer import CODEC, export_bytes, read_answers

FORGOTTEN = "u3"


def secrets_of(user: str) -> list[bytes]:
    """The personal values ``user`` was given (see :func:`_fill_personal`)."""
    return [f"Zqname {user}".encode(), f"zq.{user}@example.org".encode(), f"Zqtown-{user}".encode()]


async def _fill_personal(path: Path) -> None:
    """Users with personal data, one of them forgotten."""
    async with open_engine(path, app) as engine:
        for n in range(6):
            user = f"u{n}"
            await engine.send(
                create_user(user, f"Zqname {user}", email=f"zq.{user}@example.org", city="Oslo")
            )
            await engine.send(place_order(user, f"o{n}", n + 0.5))
            await engine.send(UpdateUser(user_id=user, city=f"Zqtown-{user}"))
        await engine.forget(FORGOTTEN)


async def _fill_deletions(path: Path) -> None:
    """Users and orders, then a hard delete, a soft delete, a stream whose
    events were all removed (as retention does once a snapshot covers them)
    and the log's newest event removed."""
    async with open_engine(path, app) as engine:
        for n in range(6):
            await engine.send(create_user(f"u{n}", city="Oslo"))
            await engine.send(place_order(f"u{n}", f"o{n}", n + 0.5))
        await engine.send(UpdateUser(user_id="u5", city="Bergen"))
        await engine.send(create_user("u6"))
        await engine.delete_stream("User-u0", hard=True)
        await engine.delete_stream("User-u2")
        await engine.send(create_user("u9"))
        await engine.delete_stream("User-u9", hard=True)
    store = LmdbStore(path)
    try:
        assert store.truncate_stream("User-u5", 3) == 3
    finally:
        store.close()


def _same_lifecycle(source: Any, copy: Any) -> None:
    """The copy holds the source's log, gaps and deletion records."""
    assert copy.head_position == source.head_position
    assert copy.streams() == source.streams()
    assert read_answers(copy) == read_answers(source)
    assert [(e.position, e.stream, e.version) for e in read_everything(copy)] == [
        (e.position, e.stream, e.version) for e in read_everything(source)
    ]
    assert copy.removed_runs() == source.removed_runs()
    ours, theirs = copy.stream_deletions(), source.stream_deletions()
    assert [(s, r.version, r.deleted, r.hard, r.removed_through, r.removed) for s, r in ours] == [
        (s, r.version, r.deleted, r.hard, r.removed_through, r.removed) for s, r in theirs
    ]
    # Deletion times to the microsecond, as the file writes them.
    for (_, mine), (_, theirs_record) in zip(ours, theirs, strict=True):
        if theirs_record.deleted_at is None:
            assert mine.deleted_at is None
        else:
            assert math.isclose(mine.deleted_at, theirs_record.deleted_at, abs_tol=1e-6)


def _lines(exported: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in exported.splitlines()]


async def test_personal_data_is_imported_encrypted_and_a_forgotten_subject_stays_forgotten(
    tmp_path: Path,
) -> None:
    await _fill_personal(tmp_path / "source")
    source = LmdbStore(tmp_path / "source", readonly=True)
    try:
        exported = export_bytes(source, batch_size=5)
        expected = read_answers(source)
    finally:
        source.close()
    live = [secret for n in range(6) if f"u{n}" != FORGOTTEN for secret in secrets_of(f"u{n}")]
    # The file holds what a reader is shown: live users in clear, the
    # forgotten one redacted, and its SubjectForgotten event.
    assert all(secret in exported for secret in live)
    assert not [secret for secret in secrets_of(FORGOTTEN) if secret in exported]
    assert [
        line["type"] for line in _lines(exported) if line.get("type") == "SubjectForgotten"
    ] == ["SubjectForgotten"]

    import_into_directory(io.BytesIO(exported), tmp_path / "copy", CODEC, batch_size=4)

    raw = (tmp_path / "copy" / "data.mdb").read_bytes()
    assert [secret for secret in live if secret in raw] == []
    copy = LmdbStore(tmp_path / "copy", readonly=True)
    try:
        assert read_answers(copy) == expected
        assert copy.get_key(FORGOTTEN) is None
        assert copy.get_key("u1") is not None
        created = CODEC.with_keys(copy).decode_event(copy.read_stream(f"User-{FORGOTTEN}")[0])
        assert (created.name, created.email, created.city) == ("", "", "")
        assert export_bytes(copy) == exported
    finally:
        copy.close()
    async with open_engine(tmp_path / "copy", app) as engine:
        head = engine.store.head_position
        user = await engine.ask(GetUserById(user_id="u1"), after=head)
        forgotten = await engine.ask(GetUserById(user_id=FORGOTTEN), after=head)
    assert (user.name, user.city) == ("Zqname u1", "Zqtown-u1")
    assert (forgotten.name, forgotten.city) == ("", "")


async def test_a_log_with_deletions_moves_lmdb_to_lmdb_with_its_gaps_and_tombstones(
    tmp_path: Path,
) -> None:
    await _fill_deletions(tmp_path / "source")
    source = LmdbStore(tmp_path / "source", readonly=True)
    try:
        exported = export_bytes(source, batch_size=3)
        lines = _lines(exported)
        assert [line["removed"] for line in lines[:-1] if "removed" in line] == [
            list(run) for run in source.removed_runs()
        ]
        assert [line["deletion"]["stream"] for line in lines if "deletion" in line] == [
            "User-u0",
            "User-u2",
            "User-u5",
            "User-u9",
        ]
        assert lines[-1]["last_position"] == source.head_position
        assert lines[-1]["removed"] == 6 and lines[-1]["deletions"] == 4

        import_into_directory(io.BytesIO(exported), tmp_path / "copy", CODEC, batch_size=4)

        copy = LmdbStore(tmp_path / "copy", readonly=True)
        try:
            _same_lifecycle(source, copy)
            assert export_bytes(copy) == exported
        finally:
            copy.close()
    finally:
        source.close()
    assert verify_store(tmp_path / "copy").sound, verify_store(tmp_path / "copy").problems
    async with open_engine(tmp_path / "copy", app) as engine:
        with pytest.raises(StreamDeleted):
            await engine.send(UpdateUser(user_id="u2", city="Paris"))
        with pytest.raises(StreamDeleted):
            await engine.send(DeleteUser(user_id="u0"))
        ack = await engine.send(UpdateUser(user_id="u6", city="Paris"))
        user = await engine.ask(GetUserById(user_id="u1"), after=ack.position)
    assert (ack.version, ack.position) == (2, 16)
    assert (user.city, user.order_count) == ("Oslo", 1)


async def test_a_log_with_deletions_moves_through_postgresql_and_back_unchanged(
    tmp_path: Path, postgres_cluster: Cluster
) -> None:
    await _fill_deletions(tmp_path / "source")
    source = LmdbStore(tmp_path / "source", readonly=True)
    exported = export_bytes(source)
    postgres = new_store(postgres_cluster)
    try:
        import_events(io.BytesIO(exported), postgres, CODEC, batch_size=3)
        _same_lifecycle(source, postgres)
        through_postgres = export_bytes(postgres, batch_size=2)
    finally:
        postgres.close()
    assert through_postgres == exported

    import_into_directory(io.BytesIO(through_postgres), tmp_path / "back", CODEC)
    back = LmdbStore(tmp_path / "back", readonly=True)
    try:
        _same_lifecycle(source, back)
    finally:
        back.close()
        source.close()
    assert verify_store(tmp_path / "back").sound


def _resummarized(lines: list[bytes]) -> bytes:
    """``lines`` (all but the summary) with a summary that matches them."""
    events = [json.loads(line) for line in lines]
    summary = {
        "motet_export": "motet-export/1",
        "events": sum(1 for line in events if "position" in line),
        "last_position": max(
            [line.get("position", 0) for line in events]
            + [line["removed"][-1] for line in events if "removed" in line]
        ),
        "sha256": hashlib.sha256(b"".join(lines)).hexdigest(),
    }
    removed = sum(
        line["removed"][-1] - line["removed"][0] + 1 for line in events if "removed" in line
    )
    deletions = sum(1 for line in events if "deletion" in line)
    if removed:
        summary["removed"] = removed
    if deletions:
        summary["deletions"] = deletions
    return b"".join(lines) + json.dumps(summary).encode() + b"\n"


@pytest.fixture
async def deletions_export(tmp_path: Path) -> list[bytes]:
    await _fill_deletions(tmp_path / "source")
    source = LmdbStore(tmp_path / "source", readonly=True)
    try:
        return export_bytes(source).splitlines(keepends=True)[:-1]
    finally:
        source.close()


def _index(lines: list[bytes], key: str) -> int:
    return next(n for n, line in enumerate(lines) if json.loads(line).get(key) is not None)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda lines: [line for line in lines if b'"removed":[' not in line],
            r"line 5: position 3 follows position 0 \(a gap no removed line declares",
        ),
        (
            lambda lines: [*lines[1:5], lines[0], *lines[5:]],
            r"line 5: a deletion record after the log's lines \(deletion lines come first\)",
        ),
        (
            lambda lines: [
                *lines[:4],
                lines[4].replace(b'"removed":[1,2]', b'"removed":[1,3]'),
                *lines[5:],
            ],
            r"line 6: position 3 follows position 3 \(out of order",
        ),
        (
            lambda lines: (
                [lines[0].replace(b'"removed_through":2', b'"removed_through":9'), *lines[1:]]
            ),
            r"line 1: the deletion record of stream 'User-u0' does not add up",
        ),
        (
            lambda lines: [*lines[:4], b'{"removed":[1]}\n', *lines[5:]],
            r"line 5 is not a valid removed line: Expected `array` of length 2",
        ),
    ],
    ids=["an undeclared gap", "a late deletion", "an overlapping run", "a bad record", "a bad run"],
)
async def test_a_bad_deletion_or_removed_line_is_refused_naming_it(
    deletions_export: list[bytes], tmp_path: Path, edit: Any, message: str
) -> None:
    lines = edit(deletions_export)

    with pytest.raises(ExportFileError, match=message):
        import_into_directory(io.BytesIO(_resummarized(lines)), tmp_path / "copy", CODEC)

    assert not (tmp_path / "copy").exists()


async def test_a_backup_taken_after_forget_holds_none_of_the_subjects_data(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    async with open_engine(source, app) as engine:
        for n in range(6):
            user = f"u{n}"
            await engine.send(
                create_user(user, f"Zqname {user}", email=f"zq.{user}@example.org", city="Oslo")
            )
            await engine.send(UpdateUser(user_id=user, city=f"Zqtown-{user}"))
        key = engine.store.get_key(FORGOTTEN)
        assert key is not None
        await engine.forget(FORGOTTEN)

    assert main(["backup", "--data", str(source), str(tmp_path / "backup")]) == 0

    raw = b"".join(path.read_bytes() for path in (tmp_path / "backup").iterdir())
    assert [secret for secret in [*secrets_of(FORGOTTEN), key] if secret in raw] == []
    backup = LmdbStore(tmp_path / "backup", readonly=True)
    try:
        assert backup.get_key(FORGOTTEN) is None
        codec = CODEC.with_keys(backup)
        created, updated = (codec.decode_event(e) for e in backup.read_stream(f"User-{FORGOTTEN}"))
        assert (created.name, created.email, created.city, updated.city) == ("", "", "", "")
        kept = codec.decode_event(backup.read_stream("User-u1")[1])
        assert kept.city == "Zqtown-u1"
    finally:
        backup.close()
