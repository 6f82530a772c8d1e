"""``motet export``, ``import``, ``backup`` and ``restore`` as the command line
runs them: what they print, how they refuse bad input (one line naming the
problem, exit 1, or 2 for a bad command line), LMDB and PostgreSQL targets."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from motet.engine.cli import main
from motet.engine.example.demo import demo
from motet.storage import LmdbStore
from tests.support.postgres import Cluster, new_schema_url


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A store with the demo's five events."""
    demo(str(tmp_path / "data"))
    return tmp_path / "data"


def _run(capsysbinary: Any, *argv: str) -> tuple[int, bytes, str]:
    status = main(list(argv))
    out, err = capsysbinary.readouterr()
    return status, out, err.decode()


def test_export_writes_ndjson_to_stdout_and_its_summary_to_stderr(
    data: Path, capsysbinary: Any
) -> None:
    status, out, err = _run(capsysbinary, "export", "--data", str(data))

    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.get("position") for line in lines] == [1, 2, 3, 4, 5, None]
    assert lines[0]["type"] == lines[0]["data"]["type"] == "UserCreated"
    assert set(lines[0]) == {
        "position",
        "stream",
        "version",
        "type",
        "event_version",
        "time",
        "metadata",
        "data",
    }
    assert lines[-1]["events"] == 5
    # Not a terminal: no progress line, one summary line.
    assert err.count("\n") == 1
    assert err.startswith("exported 5 events (positions 1..5) to standard output at ")
    assert err.endswith(f"sha256 {lines[-1]['sha256']}\n")


def test_export_and_import_through_files_and_quietly(
    data: Path, tmp_path: Path, capsysbinary: Any
) -> None:
    out_file = tmp_path / "events.ndjson"
    assert _run(capsysbinary, "export", "--data", str(data), "--out", str(out_file), "--quiet") == (
        0,
        b"",
        "",
    )
    status, _, err = _run(capsysbinary, "import", str(out_file), "--data", str(tmp_path / "b"))

    assert status == 0
    assert err.startswith(f"imported 5 events (positions 1..5) into {tmp_path / 'b'} at ")
    assert err.endswith("matches the file's summary\n")
    assert _run(capsysbinary, "export", "--data", str(tmp_path / "b"), "--quiet")[1] == (
        out_file.read_bytes()
    )
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_a_store_with_a_deleted_stream_moves_and_verifies(
    data: Path, tmp_path: Path, capsysbinary: Any
) -> None:
    store = LmdbStore(data)
    assert store.truncate_stream("User-ada", 2) == 2
    store.delete_stream("User-ada", hard=False, timestamp=1_765_000_000.25)
    runs, deletions = store.removed_runs(), store.stream_deletions()
    store.close()
    out_file = tmp_path / "events.ndjson"

    assert _run(capsysbinary, "export", "--data", str(data), "--out", str(out_file))[0] == 0
    status, _, err = _run(capsysbinary, "import", str(out_file), "--data", str(tmp_path / "b"))

    assert status == 0, err
    assert _run(capsysbinary, "verify", "--data", str(tmp_path / "b"))[0] == 0
    copy = LmdbStore(tmp_path / "b", readonly=True)
    try:
        assert copy.removed_runs() == runs == [(1, 2)]
        assert copy.stream_deletions() == deletions
        assert [e.position for e in copy.read_all()] == [3, 4, 5]
        assert copy.head_position == 5
    finally:
        copy.close()


def test_import_reads_standard_input(
    data: Path, tmp_path: Path, capsysbinary: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = _run(capsysbinary, "export", "--data", str(data), "--quiet")[1]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(exported)))

    status, _, err = _run(capsysbinary, "import", "-", "--data", str(tmp_path / "b"), "--quiet")

    assert (status, err) == (0, "")
    store = LmdbStore(tmp_path / "b", readonly=True)
    assert store.head_position == 5
    store.close()


def test_import_names_the_bad_line_and_leaves_no_store(
    data: Path, tmp_path: Path, capsysbinary: Any
) -> None:
    exported = _run(capsysbinary, "export", "--data", str(data), "--quiet")[1]
    lines = exported.splitlines(keepends=True)
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(b"".join([*lines[:2], b"{not json\n", *lines[3:]]))

    status, _, err = _run(capsysbinary, "import", str(bad), "--data", str(tmp_path / "b"))

    assert status == 1
    assert err.startswith(f"motet: error: {bad}: line 3 is not JSON: ")
    assert err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_import_refuses_a_directory_that_holds_a_store(
    data: Path, tmp_path: Path, capsysbinary: Any
) -> None:
    exported = tmp_path / "e.ndjson"
    _run(capsysbinary, "export", "--data", str(data), "--out", str(exported), "--quiet")

    status, _, err = _run(capsysbinary, "import", str(exported), "--data", str(data))

    assert status == 1
    assert err == (
        f"motet: error: {data} is not empty (found: data.mdb, lock.mdb); give a "
        "new or empty directory, nothing is ever written over\n"
    )


def test_import_of_a_missing_file_says_so(tmp_path: Path, capsysbinary: Any) -> None:
    status, _, err = _run(capsysbinary, "import", str(tmp_path / "nope.ndjson"))

    assert status == 1
    assert err.startswith(f"motet: error: cannot read {tmp_path / 'nope.ndjson'}: ")


def test_export_of_a_missing_store_says_so(tmp_path: Path, capsysbinary: Any) -> None:
    status, out, err = _run(capsysbinary, "export", "--data", str(tmp_path / "nope"))

    assert (status, out) == (1, b"")
    assert err == f"motet: error: no store at {tmp_path / 'nope'} (no such directory)\n"
    assert not (tmp_path / "nope").exists()


def test_export_store_must_be_a_postgresql_url(capsysbinary: Any) -> None:
    status, _, err = _run(capsysbinary, "export", "--store", "memory:")

    assert status == 2
    assert "--store must be a postgresql:// URL, got 'memory:'" in err


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_backup_and_restore_of_postgresql_point_to_its_own_tools(
    command: str, capsysbinary: Any
) -> None:
    status, _, err = _run(capsysbinary, command, "--store", "postgresql://u@h/db", "somewhere")

    assert status == 2
    assert err.startswith(f"motet: error: motet {command} copies LMDB stores only; ")
    assert "pg_dump" in err
    assert "pg_basebackup" in err
    assert "motet export --store URL" in err


def test_backup_and_restore_print_what_they_copied(
    data: Path, tmp_path: Path, capsysbinary: Any
) -> None:
    status, out, _ = _run(capsysbinary, "backup", "--data", str(data), str(tmp_path / "b"))
    assert status == 0
    assert out.decode() == (
        f"backed up {data} to {tmp_path / 'b'}: 5 events up to position 5, 1 streams, 0 acks, "
        f"{(tmp_path / 'b' / 'data.mdb').stat().st_size:,} bytes; verified sound\n"
    )

    status, out, _ = _run(
        capsysbinary, "restore", str(tmp_path / "b"), "--data", str(tmp_path / "r")
    )
    assert status == 0
    assert out.decode() == (
        f"restored {tmp_path / 'b'} to {tmp_path / 'r'}: 5 events up to position 5, 1 streams; "
        "verified sound\n"
    )
    assert _run(capsysbinary, "verify", "--data", str(tmp_path / "r"))[0] == 0


def test_export_and_import_move_a_store_to_postgresql_and_back(
    data: Path, tmp_path: Path, capsysbinary: Any, postgres_cluster: Cluster
) -> None:
    url = new_schema_url(postgres_cluster)
    exported = tmp_path / "e.ndjson"
    _run(capsysbinary, "export", "--data", str(data), "--out", str(exported), "--quiet")

    status, _, err = _run(capsysbinary, "import", str(exported), "--store", url)
    assert status == 0, err
    assert "imported 5 events" in err
    assert "password" not in err.split(" into ")[1].split(" at ")[0]
    status, out, _ = _run(capsysbinary, "export", "--store", url, "--quiet")
    assert (status, out) == (0, exported.read_bytes())

    # A second import into the same (now full) schema is refused.
    status, _, err = _run(capsysbinary, "import", str(exported), "--store", url)
    assert status == 1
    assert "the target store is not empty (its log is at position 5)" in err


def test_export_with_another_app_names_the_first_event_it_cannot_decode(
    data: Path, tmp_path: Path, capsysbinary: Any
) -> None:
    out = tmp_path / "e.ndjson"

    status, _, err = _run(
        capsysbinary,
        "export",
        "--data",
        str(data),
        "--app",
        "tests.cli.shop_app:app",
        "--out",
        str(out),
    )

    assert status == 1
    assert err == (
        "motet: error: the event at position 1 cannot be exported: unknown event type "
        "'UserCreated' (export with the app that wrote it)\n"
    )
    assert not out.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_shows_on_a_terminal_only_and_is_cleared() -> None:
    from motet.engine.cli.progress import ProgressLine

    terminal, pipe = _Terminal(), io.StringIO()
    shown = ProgressLine("exporting", stream=terminal)
    ProgressLine("exporting", stream=pipe)(10, 0.5)
    ProgressLine("exporting", stream=terminal, quiet=True)(10, 0.5)

    shown(500, 0.5)
    shown(1000, 1.0)
    shown.close()

    assert pipe.getvalue() == ""
    text = terminal.getvalue()
    assert text.startswith("\rexporting 500 events   50%  ")
    assert "\rexporting 1,000 events  100%  " in text
    assert text.endswith("\r")
    assert "events/s" in text


def test_export_into_a_pipe_closed_early_says_so_once(motet: Any, tmp_path: Path) -> None:
    from motet.engine.example import OrderPlaced, app
    from motet.storage.records import Append

    codec = app.codec()
    store = LmdbStore(tmp_path / "big", durability="none")
    order = codec.encode_event(OrderPlaced(user_id="u", order_id="o" * 200, amount=1.0, at=0.0))
    for n in range(20):
        store.append_batch([Append("User-u", n * 1000, [order] * 1000)], 0.0)
    store.close()
    process = motet.popen(
        "export", "--data", str(tmp_path / "big"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(10) == b'{"position'
    process.stdout.close()

    assert process.wait(30) == 1
    assert process.stderr.read() == (
        b"motet: error: standard output was closed before the export ended\n"
    )
