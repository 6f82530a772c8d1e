"""The secrets a command is given: the shared token and the TLS files.

``motet serve`` and the commands that talk to it read them the same way:
``--token`` or ``--token-file`` (else ``$MOTET_TOKEN``), and TLS from
``--tls-cert``/``--tls-key`` (serving) or ``--tls``/``--cafile`` (connecting).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import USAGE, fail

if TYPE_CHECKING:
    import ssl

__all__ = ["TOKEN_VARIABLE", "client_ssl_context", "read_token", "server_ssl_context"]

TOKEN_VARIABLE = "MOTET_TOKEN"
"""The environment variable that holds the token when no option gives one."""


def read_token(args: argparse.Namespace) -> str | None:
    """The token of ``--token-file``, ``--token`` or ``$MOTET_TOKEN``, in that
    order; ``None`` when there is none. Ends the command (status 2) when the
    file cannot be read or the token is empty."""
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            fail(f"cannot read --token-file: {exc}", USAGE)
        if not token:
            fail(f"--token-file {args.token_file} is empty", USAGE)
        return token
    given: str | None = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if given is not None and not given.strip():
        fail("the token is empty", USAGE)
    return given


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
