"""Fixtures shared by the test suite."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from motet.engine import Engine, Server, open_engine, open_server
from motet.engine.example import app as example_app
from tests.support.paths import REPO

# pytester (tests/testing) runs a user's test file that uses the plugin, as
# pytest would; pytest takes pytest_plugins only from the top-level conftest.
pytest_plugins = ["pytester"]

# --- The `process` marker ------------------------------------------------------------

PROCESS_TESTS = Path(__file__).resolve().parent / "process"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks ``process`` every test in tests/process and every test that runs
    the ``motet`` executable (the :func:`motet` fixture), so that
    ``pytest -m "not process"`` runs the in-process suite only."""
    for item in items:
        if item.path.is_relative_to(PROCESS_TESTS) or "motet" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.process)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs at ``tmp_path / "disk"``, for full-disk tests (mounting
    needs root: skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the session (tests/support/postgres.py),
    started only by the tests that ask for it."""
    from tests.support.postgres import running_cluster

    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_standby_pair() -> Iterator[Any]:
    """A throwaway primary with a synchronous standby for the session
    (tests/support/postgres.py). A test that stops the standby starts it
    again before it ends."""
    from tests.support.postgres import running_standby_pair

    with running_standby_pair() as pair:
        yield pair


@pytest.fixture(scope="session")
def tls_contexts(tls_files: TlsFiles) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """``(server_context, client_context)`` for TLS to 127.0.0.1, made from
    :func:`tls_files`."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_files.cert, tls_files.key)
    client = ssl.create_default_context(cafile=str(tls_files.ca))
    return server, client


# --- The motet executable, run as a user runs it ----------------------------------

# The line `motet serve` logs once it listens, e.g. "serving motet.engine.example:app
# from data on 127.0.0.1:40123 with TLS (metrics: http://127.0.0.1:40124/metrics, ...".
_SERVING = re.compile(
    r"serving \S+ from .* on (?P<host>\S+):(?P<port>\d+)(?: with TLS)? "
    r"\(metrics: (?:http://\S+:(?P<metrics>\d+)/metrics|off)"
    r"(?:, http: (?:https?://\S+:(?P<http>\d+)/|off))?"
)


def motet_command() -> list[str]:
    """The installed ``motet`` console script, or the same entry point through
    this interpreter when the script is missing."""
    script = Path(sys.executable).parent / "motet"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from motet.engine.cli import main; sys.exit(main())"]


class MotetServer:
    """A ``motet serve`` process that logged its listening line; its output
    (stdout and stderr) goes to ``log_path``."""

    def __init__(
        self, process: subprocess.Popen[bytes], log_path: Path, data: Path, match: re.Match[str]
    ) -> None:
        self.process = process
        self.log_path = log_path
        self.data = data
        self.host = match["host"]
        self.port = int(match["port"])
        self.metrics_port = int(match["metrics"]) if match["metrics"] else None
        self.http_port = int(match["http"]) if match["http"] else None

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"<MotetServer pid={self.process.pid} port={self.port} {state}>"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit status; SIGKILL and fail after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"motet serve ignored SIGTERM for {timeout} s; log:\n{self.log()}"
            ) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class Motet:
    """Runs the ``motet`` executable in ``directory`` (also its ``HOME``), with
    this checkout on ``PYTHONPATH``, and ends every process it started."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.home = directory / "home"
        self.home.mkdir(exist_ok=True)
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("MOTET_", "PYTHON"))
        }
        self.env.update(PYTHONPATH=str(REPO), HOME=str(self.home), PYTHONUNBUFFERED="1")
        self.processes: list[subprocess.Popen[bytes]] = []
        self._servers: list[MotetServer] = []

    def __repr__(self) -> str:
        running = sum(process.poll() is None for process in self.processes)
        return f"<Motet started={len(self.processes)} running={running}>"

    def run(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``motet ARGS`` to completion; stdout and stderr are captured as text."""
        return subprocess.run(
            [*motet_command(), *args],
            cwd=self.directory,
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(self, *args: str, **options: Any) -> subprocess.Popen[bytes]:
        """Start ``motet ARGS``; ended at teardown if the test does not."""
        options.setdefault("env", self.env)
        options.setdefault("cwd", self.directory)
        process = subprocess.Popen([*motet_command(), *args], **options)
        self.processes.append(process)
        return process

    def serve(
        self, *args: str, data: Path | None = None, ready_timeout: float = 10.0
    ) -> MotetServer:
        """Start ``motet serve --data DATA --port 0 --metrics-port 0 ARGS`` (later
        options win) and return once it logged its ports and its port accepts."""
        data = data if data is not None else self.directory / "data"
        log_path = self.directory / f"serve-{len(self.processes)}.log"
        with log_path.open("wb") as log_file:
            process = self.popen(
                "serve",
                "--data",
                str(data),
                "--port",
                "0",
                "--metrics-port",
                "0",
                *args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout
        while (match := _SERVING.search(log_path.read_text(errors="replace"))) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
                raise AssertionError(
                    f"motet serve did not start (exit {process.returncode}); log:\n"
                    + log_path.read_text(errors="replace")
                )
            time.sleep(0.02)
        server = MotetServer(process, log_path, data, match)
        self._servers.append(server)
        with socket.create_connection((server.host, server.port), timeout=5):
            pass
        return server

    def close(self) -> None:
        """End what still runs: servers with SIGTERM (they must exit 0), then
        anything left with SIGKILL."""
        graceful = []
        for server in self._servers:
            if server.process.poll() is None:
                status = server.terminate()
                if status != 0:
                    graceful.append(f"{server!r} exited {status} on SIGTERM:\n{server.log()}")
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        leftover = [process.pid for process in self.processes if process.poll() is None]
        assert not leftover, f"processes still running: {leftover}"
        assert not graceful, "\n".join(graceful)


@pytest.fixture
def motet(tmp_path: Path) -> Iterator[Motet]:
    """Runs the ``motet`` executable in ``tmp_path``; see :class:`Motet`."""
    runner = Motet(tmp_path)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def motet_server(motet: Motet) -> Any:
    """``motet_server(*extra_args, data=None)`` starts ``motet serve`` on free
    ports (data in ``tmp_path / "data"`` by default) and returns a
    :class:`MotetServer`; servers still running at teardown get SIGTERM and
    must exit 0."""
    return motet.serve


class TlsFiles(NamedTuple):
    """PEM files for a TLS server on 127.0.0.1 and the CA its clients trust."""

    cert: Path
    key: Path
    ca: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Certificate, key and CA files (``trustme`` when installed, else a
    self-signed certificate from ``openssl req``, which is its own CA)."""
    directory = tmp_path_factory.mktemp("tls-files")
    cert, key, ca = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    if importlib.util.find_spec("trustme") is not None:
        import trustme

        authority = trustme.CA()
        issued = authority.issue_cert("127.0.0.1")
        authority.cert_pem.write_to_path(str(ca))
        issued.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        return TlsFiles(cert, key, ca)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ca.write_bytes(cert.read_bytes())
    return TlsFiles(cert, key, ca)


# --- An example-app engine with a server, in this process --------------------------


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """The example app on an LMDB store in ``tmp_path`` (durability ``none``)."""
    async with open_engine(tmp_path / "data", example_app, durability="none") as engine:
        yield engine


@pytest.fixture
async def server(engine: Engine) -> AsyncIterator[Server]:
    """A TCP server for :func:`engine` on a free port of 127.0.0.1."""
    async with open_server(engine, port=0) as server:
        yield server
