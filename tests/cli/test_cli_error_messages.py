"""``motet serve`` names the flag and port that is already in use, and
``motet client --tls`` says a certificate it does not trust is a certificate
problem (and how to fix it), not a server that is not running."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli.test_cli import one_line_error


@pytest.fixture
def taken() -> Iterator[int]:
    """A port of 127.0.0.1 that another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    ("flag", "others"),
    [
        ("--port", ["--no-metrics"]),
        ("--metrics-port", ["--port", "0"]),
        ("--http-port", ["--port", "0", "--metrics-port", "0"]),
    ],
)
def test_serve_names_the_port_already_in_use(
    motet: Any, taken: int, flag: str, others: list[str]
) -> None:
    result = motet.run(
        "serve", "--data", "data", "--log-level", "warning", *others, flag, str(taken)
    )
    stderr = one_line_error(result, 1)
    assert stderr.startswith(
        f"motet: error: cannot serve: {flag} {taken}: 127.0.0.1:{taken} is already in use"
    ), stderr
    assert f"choose another {flag}" in stderr


def test_serve_names_two_flags_that_ask_for_one_port(motet: Any, taken: int) -> None:
    del taken
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    result = motet.run(
        "serve", "--data", "data", "--log-level", "warning", "--port", port, "--metrics-port", port
    )
    stderr = one_line_error(result, 1)
    assert f"--port and --metrics-port both ask for port {port}" in stderr


def test_an_untrusted_certificate_is_reported_as_a_certificate_problem(
    motet: Any, motet_server: Any, tls_files: Any
) -> None:
    server = motet_server("--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key))
    for command in (["client", "ping"], ["status"]):
        stderr = one_line_error(motet.run(*command, "--port", str(server.port), "--tls"), 1)
        assert stderr.startswith(
            f"motet: error: the TLS certificate of 127.0.0.1:{server.port} is not trusted: "
        ), stderr
        assert "--cafile FILE" in stderr and "is 'motet serve' running" not in stderr
    trusted = motet.run(
        "client", "--port", str(server.port), "--tls", "--cafile", str(tls_files.ca), "ping"
    )
    assert trusted.returncode == 0, trusted.stderr
