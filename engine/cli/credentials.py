"""The secrets a command is given: the tokens and the TLS files.

``motet serve`` and the commands that talk to it read them the same way:
``--token`` or ``--token-file`` (else ``$MOTET_TOKEN``), and TLS from
``--tls-cert``/``--tls-key`` (serving) or ``--tls``/``--cafile`` (connecting).
``motet serve`` also takes the client token (``--client-token`` or
``--client-token-file``, else ``$MOTET_CLIENT_TOKEN``), which allows only
commands, queries, status and ping, and the metrics token
(``--metrics-token`` or ``--metrics-token-file``, else
``$MOTET_METRICS_TOKEN``), which allows only reading ``/metrics``.

A value given on the command line can be read by every local user (in
``/proc/PID/cmdline``, as ``ps`` shows it); a file or the environment
variable (``/proc/PID/environ`` is readable by the same user only) cannot.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import USAGE, fail

if TYPE_CHECKING:
    import ssl

__all__ = [
    "CLIENT_TOKEN_VARIABLE",
    "METRICS_TOKEN_VARIABLE",
    "TOKEN_VARIABLE",
    "client_ssl_context",
    "read_client_token",
    "read_metrics_token",
    "read_token",
    "server_ssl_context",
]

TOKEN_VARIABLE = "MOTET_TOKEN"
"""The environment variable that holds the token when no option gives one."""

CLIENT_TOKEN_VARIABLE = "MOTET_CLIENT_TOKEN"
"""The environment variable that holds ``motet serve``'s client token when no option gives one."""

METRICS_TOKEN_VARIABLE = "MOTET_METRICS_TOKEN"
"""The environment variable that holds ``motet serve``'s metrics token when no option gives one."""


def read_token(args: argparse.Namespace) -> str | None:
    """The token of ``--token-file``, ``--token`` or ``$MOTET_TOKEN``, in that
    order; ``None`` when there is none. Ends the command (status 2) when the
    file cannot be read or the token is empty."""
    return _read_secret(args.token_file, args.token, "--token", TOKEN_VARIABLE)


def read_client_token(args: argparse.Namespace) -> str | None:
    """The client token of ``--client-token-file``, ``--client-token`` or
    ``$MOTET_CLIENT_TOKEN``, in that order, as :func:`read_token` reads the token."""
    return _read_secret(
        args.client_token_file, args.client_token, "--client-token", CLIENT_TOKEN_VARIABLE
    )


def read_metrics_token(args: argparse.Namespace) -> str | None:
    """The metrics token of ``--metrics-token-file``, ``--metrics-token`` or
    ``$MOTET_METRICS_TOKEN``, in that order, as :func:`read_token` reads the token."""
    return _read_secret(
        args.metrics_token_file, args.metrics_token, "--metrics-token", METRICS_TOKEN_VARIABLE
    )


def _read_secret(file: str | None, given: str | None, option: str, variable: str) -> str | None:
    if file:
        try:
            secret = Path(file).read_text().strip()
        except OSError as exc:
            fail(f"cannot read {option}-file: {exc}", USAGE)
        if not secret:
            fail(f"{option}-file {file} is empty", USAGE)
        return secret
    value: str | None = given or os.environ.get(variable) or None
    if value is not None and not value.strip():
        fail(f"the {option.removeprefix('--').replace('-', ' ')} is empty", USAGE)
    return value


def server_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context of ``--tls-cert`` and ``--tls-key``, or ``None`` without them.
    Ends the command (status 2) when only one is given or they cannot be loaded."""
    if bool(args.tls_cert) != bool(args.tls_key):
        fail("--tls-cert and --tls-key go together", USAGE)
    if not args.tls_cert:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        fail(f"cannot load the TLS certificate or key: {exc}", USAGE)
    return context


def client_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context of ``--tls`` (trusting ``--cafile`` or the system's CAs),
    or ``None`` without ``--tls``. Ends the command (status 2) for ``--cafile``
    without ``--tls`` or a CA file that cannot be loaded."""
    if not args.tls:
        if args.cafile:
            fail("--cafile needs --tls", USAGE)
        return None
    import ssl

    try:
        return ssl.create_default_context(cafile=args.cafile)
    except (OSError, ssl.SSLError) as exc:
        fail(f"cannot load --cafile: {exc}", USAGE)
