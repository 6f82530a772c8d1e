"""A throwaway PostgreSQL cluster for tests: initdb into a temporary
directory, started with pg_ctl on a free port of 127.0.0.1, fsync on, stopped
and removed at the end. :func:`running_standby_pair` adds a synchronous
standby made by ``pg_basebackup -R``.

PostgreSQL refuses to run as root, so when the tests run as root the cluster
belongs to the ``postgres`` user and every server program runs through
``runuser -u postgres``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from motet.storage.postgres_store import PostgresStore

__all__ = [
    "STANDBY_NAME",
    "Cluster",
    "StandbyPair",
    "find_bin_dir",
    "new_schema_url",
    "new_store",
    "running_cluster",
    "running_standby_pair",
]

_SERVER_USER = "postgres"


def find_bin_dir() -> Path:
    """The folder of the PostgreSQL server programs: where ``initdb`` is on
    PATH, else the newest ``/usr/lib/postgresql/*/bin`` (Debian keeps them off
    PATH). Raises ``FileNotFoundError`` when there is none."""
    found = shutil.which("initdb")
    if found:
        # A symlink on PATH (e.g. /usr/local/bin/initdb): the other programs sit beside its target.
        return Path(found).resolve().parent
    candidates = [
        Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if (Path(p) / "initdb").exists()
    ]
    if not candidates:
        raise FileNotFoundError(
            "PostgreSQL is not installed: no initdb on PATH or in /usr/lib/postgresql/*/bin"
        )
    return max(candidates, key=lambda p: _version_key(p.parent.name))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _start_on_a_free_port(cluster: Cluster, what: str) -> None:
    """Start ``cluster``; another process may have taken its port between
    the probe and the start, so a failed start tries a new port (three
    tries in all)."""
    for attempt in range(3):
        try:
            cluster.start()
            return
        except subprocess.CalledProcessError as exc:
            if attempt == 2:
                raise RuntimeError(f"{what} did not start: {exc.stderr}\n{cluster.log()}") from exc
            cluster.port = _free_port()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """A running cluster: ``conninfo(dbname)`` connects to one of its
    databases; ``create_database()`` makes a fresh, empty one."""

    def __init__(self, bin_dir: Path, root: Path, port: int, data: str = "data") -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / data
        self.log_path = root / ("server.log" if data == "data" else f"{data}.log")
        self.port = port
        self._databases = 0
        self._schemas = 0

    def __repr__(self) -> str:
        return f"<Cluster 127.0.0.1:{self.port} data={str(self.data)!r}>"

    def conninfo(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``dbname`` as the superuser."""
        return f"postgresql://{_SERVER_USER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit superuser connection (for administration in tests)."""
        return psycopg.connect(self.conninfo(dbname), autocommit=True)

    def create_database(self) -> str:
        """Create an empty database; return its ``postgresql://`` URL."""
        self._databases += 1
        name = f"motet_{self._databases}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.conninfo(name)

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a server program as the cluster's owner; raise on failure."""
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", _SERVER_USER, "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)

    def init(self) -> None:
        """Create the cluster's files (``initdb``); fsync is on once it runs."""
        self.run("initdb", "-D", str(self.data), "-U", _SERVER_USER, "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip

    def start(self) -> None:
        """Start the server on ``self.port`` and wait until it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=on "
            "-c max_connections=100 -c shared_buffers=64MB"
        )
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path),
                 "-o", options, "-w", "-t", "30", "start")  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate`` by default: the files are deleted
        next, no shutdown checkpoint is worth waiting for)."""
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def postmaster_pid(self) -> int:
        """The process id of the running server (the first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def log(self) -> str:
        """The server's log so far (for a failing test's message)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Start a fresh cluster; stop it and delete its files when done."""
    bin_dir = find_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="motet-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, _SERVER_USER, _SERVER_USER)
        cluster = Cluster(bin_dir, root, _free_port())
        try:
            cluster.init()
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr}") from exc
        _start_on_a_free_port(cluster, "PostgreSQL")
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


STANDBY_NAME = "motet_standby"
"""The standby's ``application_name``, which the primary's
``synchronous_standby_names`` names."""


class StandbyPair:
    """A primary cluster and its synchronous standby (see
    :func:`running_standby_pair`): with ``synchronous_commit = on`` a commit
    on the primary returns only once the standby has flushed it."""

    def __init__(self, primary: Cluster, standby: Cluster) -> None:
        self.primary = primary
        self.standby = standby
        self.frozen = False

    def __repr__(self) -> str:
        return f"<StandbyPair primary={self.primary!r} standby={self.standby!r}>"

    def replication_state(self) -> str | None:
        """The primary's ``sync_state`` of the standby (``'sync'`` while it
        confirms commits), ``None`` while it is not connected."""
        with self.primary.connect() as conn:
            row = conn.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                (STANDBY_NAME,),
            ).fetchone()
        return None if row is None else str(row[0])

    def wait_synchronous(self, timeout: float = 30.0) -> None:
        """Wait until the primary counts the standby as its synchronous one."""
        deadline = time.monotonic() + timeout
        while self.replication_state() != "sync":
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the standby did not become synchronous within {timeout} s\n"
                    f"{self.standby.log()}"
                )
            time.sleep(0.05)

    def stop_standby(self) -> None:
        """Stop the standby (``pg_ctl stop -m fast``): commits on the primary
        then wait for it."""
        self.standby.stop("fast")

    def start_standby(self) -> None:
        """Start the standby again and wait until it is synchronous."""
        self.standby.start()
        self.wait_synchronous()

    def freeze_standby(self) -> None:
        """Stop every process of the standby with SIGSTOP: its connection
        to the primary stays open, and answers nothing (a hung host)."""
        self._signal_standby(signal.SIGSTOP)
        self.frozen = True

    def thaw_standby(self) -> None:
        """Resume the frozen standby (SIGCONT) and wait until it is synchronous."""
        self._signal_standby(signal.SIGCONT)
        self.frozen = False
        self.wait_synchronous()

    def restore(self) -> None:
        """Bring the standby back however the test left it."""
        if self.frozen:
            self.thaw_standby()
        elif self.replication_state() is None:
            self.start_standby()

    def _signal_standby(self, signum: int) -> None:
        postmaster = self.standby.postmaster_pid()
        for pid in [postmaster, *_children(postmaster)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def _children(parent: int) -> list[int]:
    """The process ids whose parent is ``parent`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


@contextmanager
def running_standby_pair() -> Iterator[StandbyPair]:
    """Start a fresh primary and a standby cloned from it by
    ``pg_basebackup -R`` (streaming replication, 127.0.0.1 only, free ports),
    with the primary's ``synchronous_standby_names`` naming the standby;
    return once the standby is synchronous. Both are stopped and deleted
    when done."""
    with running_cluster() as primary:
        conf = primary.data / "postgresql.conf"
        with conf.open("a") as settings:
            # wal_level=replica and max_wal_senders are the defaults; said
            # here so that a changed default cannot break replication.
            settings.write("wal_level = replica\nmax_wal_senders = 4\n")
        with (primary.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        primary.stop("fast")
        primary.start()
        standby = Cluster(primary.bin_dir, primary.root, _free_port(), data="standby")
        primary.run("pg_basebackup", "-D", str(standby.data), "-R", "-X", "stream",
                    "--no-sync", "-c", "fast",
                    "-d", f"host=127.0.0.1 port={primary.port} user={_SERVER_USER} "
                    f"application_name={STANDBY_NAME}")  # fmt: skip
        # -R copies application_name into primary_conninfo; cluster_name (the
        # walreceiver's name when a conninfo has none) says the same, should
        # another pg_basebackup version leave it out.
        with (standby.data / "postgresql.auto.conf").open("a") as auto:
            auto.write(f"cluster_name = '{STANDBY_NAME}'\n")
        _start_on_a_free_port(standby, "the standby")
        pair = StandbyPair(primary, standby)
        try:
            with primary.connect() as conn:
                conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
                conn.execute("SELECT pg_reload_conf()")
            pair.wait_synchronous()
            yield pair
        finally:
            if pair.frozen:
                pair._signal_standby(signal.SIGCONT)
            if standby.data.joinpath("postmaster.pid").exists():
                standby.stop()


def new_schema_url(cluster: Cluster, dbname: str = "postgres") -> str:
    """Create an empty schema in ``dbname``; return a URL whose connections
    use it (one throwaway store per schema is much faster than one database
    per store)."""
    cluster._schemas += 1
    name = f"store_{cluster._schemas}"
    with cluster.connect(dbname) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return f"{cluster.conninfo(dbname)}?options=-csearch_path%3D{name}"


def new_store(cluster: Cluster, **options: Any) -> PostgresStore:
    """A :class:`PostgresStore` in a fresh, empty schema of ``cluster``."""
    return PostgresStore(new_schema_url(cluster), **options)
