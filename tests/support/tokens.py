"""The tokens of the token-scope tests, and the failed-auth counter they read."""

from __future__ import annotations

import re

from motet.engine import Engine

__all__ = ["CLIENT_TOKEN", "FULL_TOKEN", "METRICS_TOKEN", "auth_failures"]

FULL_TOKEN = "full-s3cret"
CLIENT_TOKEN = "client-s3cret"
METRICS_TOKEN = "metrics-s3cret"


def auth_failures(engine: Engine) -> float:
    """``motet_auth_failures_total`` of ``engine``, from its exposition."""
    assert engine.metrics is not None
    text = engine.metrics.exposition().decode()
    match = re.search(r"^motet_auth_failures_total (\S+)$", text, re.MULTILINE)
    assert match is not None, text
    return float(match[1])
