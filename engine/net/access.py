"""Who may do what on the wire: the tokens a server accepts, the scope each
grants, and what a wrong token costs the one who sent it.

Two scopes, one rule (:data:`CLIENT_OPS`):

- ``full`` (the ``--token`` of ``motet serve``): every request;
- ``client`` (the ``--client-token``): what an application needs, i.e.
  ``command``, ``query``, ``status``, ``ping`` and ``auth`` (and the HTTP
  ``/metrics``). Reading a stream and subscribing to the log hand out every
  event's data (the example app's ``UserCreated`` holds a password hash), so
  ``read``, ``subscribe``, ``unsubscribe``, the HTTP routes that mirror them
  and the projection controls need ``full``; so does any op not in the list,
  including ops added later (``delete_stream``, ``apply_retention``). A hard
  delete needs, beyond ``full``, a server started with the opt-in
  (:class:`HardDeleteRefused`).
- ``metrics`` (the ``--metrics-token``, HTTP only): ``GET /metrics`` and
  nothing else, so the token a Prometheus server keeps opens no data.

A server without tokens grants ``full`` to every connection. Tokens are
compared in constant time, each presented token against every configured
one, so the time taken tells neither whether nor which one matched.

A wrong token (:class:`AuthGuard`) is counted in
``motet_auth_failures_total``, logged (one line per ``log_interval`` seconds
at most, with the count since the last one), and answered only after
``delay`` seconds; at most :data:`AUTH_FAILURE_CONCURRENCY` such waits run
at once per server, so however many connections guess, a server answers at
most ``AUTH_FAILURE_CONCURRENCY / delay`` wrong tokens a second (4 with the
default one second, against some 14,000 before). A connection that has sent
``max_failures`` wrong tokens is closed. Requests with a valid token never
wait.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any, Final

import trio

from motet.storage.errors import Unauthorized

if TYPE_CHECKING:
    from ..metrics import EngineMetrics

__all__ = [
    "AUTH_FAILURE_CONCURRENCY",
    "CLIENT",
    "CLIENT_OPS",
    "DEFAULT_AUTH_FAILURE_DELAY",
    "DEFAULT_MAX_AUTH_FAILURES",
    "FULL",
    "METRICS",
    "METRICS_OP",
    "AuthGuard",
    "HardDeleteRefused",
    "ScopeRefused",
    "Tokens",
    "hard_delete_refusal",
    "peer_name",
    "scope_refusal",
]

FULL: Final = "full"
"""The scope of the full-access token: every request."""

CLIENT: Final = "client"
"""The scope of the client token: the ops of :data:`CLIENT_OPS` only."""

CLIENT_OPS: Final = frozenset({"command", "query", "status", "ping", "auth"})
"""The line-protocol ops the ``client`` scope may send; every other op needs ``full``."""

METRICS: Final = "metrics"
"""The scope of the metrics token: reading ``/metrics`` only."""

METRICS_OP: Final = "metrics"
"""What ``GET /metrics`` stands for in :func:`scope_refusal` (no line-protocol op)."""

# What each scope but ``full`` may do.
_ALLOWED: Final = {CLIENT: CLIENT_OPS | {METRICS_OP}, METRICS: frozenset({METRICS_OP})}

DEFAULT_AUTH_FAILURE_DELAY: Final = 1.0
"""Seconds a wrong token's answer waits."""

DEFAULT_MAX_AUTH_FAILURES: Final = 5
"""Wrong tokens after which a line-protocol connection is closed."""

AUTH_FAILURE_CONCURRENCY: Final = 4
"""How many wrong tokens one server lets wait out their delay at once."""

_LOG_INTERVAL: Final = 10.0

log = logging.getLogger("motet.auth")


class ScopeRefused(Unauthorized):
    """A valid token whose scope does not allow the request: the caller's
    fault (use the full-access token for it). ``needed`` names the scope."""

    def __init__(self, message: str, *, needed: str) -> None:
        super().__init__(message)
        self.needed = needed


class HardDeleteRefused(Unauthorized):
    """A hard delete (removing a stream's events) sent to a server that was
    not started with ``allow_hard_delete`` (``motet serve
    --allow-hard-delete``): the operator must opt in, so that no client can
    remove events by accident. A soft delete needs no opt-in."""


def hard_delete_refusal() -> HardDeleteRefused:
    """The error a server without the hard-delete opt-in answers with."""
    return HardDeleteRefused(
        "hard delete is disabled on this server: it removes the stream's events for good; "
        "start the server with --allow-hard-delete to allow it, or delete without hard "
        "(a tombstone)"
    )


class Tokens:
    """The tokens of one server and the scope each grants."""

    def __init__(
        self,
        token: str | None,
        client_token: str | None = None,
        metrics_token: str | None = None,
    ) -> None:
        if client_token is not None and client_token == token:
            raise ValueError("the client token must differ from the full-access token")
        if metrics_token is not None and metrics_token in (token, client_token):
            raise ValueError("the metrics token must differ from the other tokens")
        self._tokens = tuple(
            (secret.encode(), scope)
            for secret, scope in ((token, FULL), (client_token, CLIENT), (metrics_token, METRICS))
            if secret is not None
        )

    def __repr__(self) -> str:
        return f"<Tokens scopes={[scope for _, scope in self._tokens]}>"

    @property
    def required(self) -> bool:
        """Whether a connection must authenticate before anything else."""
        return bool(self._tokens)

    @property
    def open_scope(self) -> str | None:
        """The scope of a connection that has not authenticated: ``full``
        without tokens, else none."""
        return None if self._tokens else FULL

    def scope_of(self, presented: bytes) -> str | None:
        """The scope ``presented`` grants, ``None`` for a wrong token (every
        token is granted ``full`` by a server without tokens)."""
        if not self._tokens:
            return FULL
        granted = None
        for secret, scope in self._tokens:
            # No early exit: compare with every token, in constant time.
            if hmac.compare_digest(secret, presented):
                granted = scope
        return granted


def scope_refusal(scope: str, op: str) -> ScopeRefused | None:
    """Why ``scope`` may not send ``op`` (a line-protocol op, or the op an
    HTTP route stands for), or ``None`` when it may."""
    if scope == FULL or op in _ALLOWED.get(scope, ()):
        return None
    if scope == METRICS:
        granted = "the metrics token (scope 'metrics'), which may only read /metrics"
    else:
        granted = (
            f"the client token (scope {scope!r}), which may send only "
            f"{', '.join(sorted(CLIENT_OPS - {'auth'}))}"
        )
    return ScopeRefused(
        f"{op} needs the full-access token (scope {FULL!r}); this connection has {granted}",
        needed=FULL,
    )


class AuthGuard:
    """Counts, logs and slows down the wrong tokens one server receives."""

    def __init__(
        self,
        metrics: EngineMetrics | None,
        *,
        wire: str,
        delay: float = DEFAULT_AUTH_FAILURE_DELAY,
        max_failures: int = DEFAULT_MAX_AUTH_FAILURES,
        log_interval: float = _LOG_INTERVAL,
    ) -> None:
        if delay < 0 or max_failures < 1:
            raise ValueError(
                f"the auth failure delay must be >= 0 and max failures >= 1, "
                f"got {delay!r} and {max_failures!r}"
            )
        self.delay = delay
        self.max_failures = max_failures
        self.failures = 0
        self._metrics = metrics
        self._wire = wire
        self._log_interval = log_interval
        self._waiting = trio.Semaphore(AUTH_FAILURE_CONCURRENCY)
        self._unlogged = 0
        self._logged_at: float | None = None

    def __repr__(self) -> str:
        return f"<AuthGuard {self._wire} failures={self.failures} delay={self.delay}>"

    async def failed(self, peer: str) -> None:
        """Count and log one wrong token from ``peer``, then wait out its
        delay (queueing behind other wrong tokens at the concurrency cap).
        Cancelling it ends the wait; the attempt stays counted."""
        self.failures += 1
        if self._metrics is not None:
            self._metrics.auth_failed()
        self._log(peer)
        async with self._waiting:
            await trio.sleep(self.delay)

    def _log(self, peer: str) -> None:
        # One line per interval at most: a guessing client must not fill the disk.
        self._unlogged += 1
        now = trio.current_time()
        if self._logged_at is not None and now - self._logged_at < self._log_interval:
            return
        since = "" if self._logged_at is None else f" in the last {now - self._logged_at:.0f} s"
        log.warning(
            "%d failed authentication attempt(s) on the %s server%s (latest from %s; "
            "%d since start); each is answered after %.1f s",
            self._unlogged,
            self._wire,
            since,
            peer,
            self.failures,
            self.delay,
        )
        self._unlogged = 0
        self._logged_at = now


def peer_name(stream: Any) -> str:
    """The ``host:port`` at the other end of a trio socket stream (also
    under TLS), or ``"unknown"``."""
    transport = getattr(stream, "transport_stream", stream)
    try:
        host, port, *_ = transport.socket.getpeername()
    except (AttributeError, OSError, TypeError, ValueError):
        return "unknown"
    return f"{host}:{port}"
