"""The interactive prompt's history file, without the secrets typed at it.

A line that gives a password or a token (``CreateUser ... password=pw``,
``{"op": "auth", "token": "..."}``) is dropped from readline's history as
soon as it is entered, as shells drop lines marked secret, so it is neither
recalled with the arrow keys nor written to the history file; lines that an
older version wrote there are dropped when the file is read. The file is
readable by its owner only.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Final

__all__ = ["SECRET_FIELDS", "forget_if_secret", "is_secret", "load_history", "save_history"]

SECRET_FIELDS: Final = ("password", "token", "secret")
"""Field names (or parts of them, in any case) whose values never reach the history."""

# ``password=...`` / ``@token=...`` in the short form, ``"password": ...`` in JSON;
# a key that merely contains a name (``new_password``) counts too.
_SECRET = re.compile(
    r"""(?:^|[\s{,])["']?@?[\w.-]*(?:""" + "|".join(SECRET_FIELDS) + r""")[\w.-]*["']?\s*[=:]""",
    re.IGNORECASE,
)


def is_secret(line: str) -> bool:
    """Whether ``line`` gives a value to a field named like a secret."""
    return _SECRET.search(line) is not None


def forget_if_secret(readline: Any, line: str) -> None:
    """Drop ``line``, just entered, from ``readline``'s history when it holds a secret."""
    if not is_secret(line):
        return
    length = readline.get_current_history_length()
    if length and readline.get_history_item(length) == line:
        # remove_history_item counts from 0, get_history_item from 1.
        readline.remove_history_item(length - 1)


def load_history(readline: Any, path: Path) -> None:
    """Read ``path`` into ``readline``'s history, leaving out secret lines."""
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    for index in range(readline.get_current_history_length(), 0, -1):
        item = readline.get_history_item(index)
        if item is not None and is_secret(item):
            readline.remove_history_item(index - 1)


def save_history(readline: Any, path: Path, length: int) -> None:
    """Write the last ``length`` lines of history to ``path``, readable by its owner only."""
    with contextlib.suppress(OSError):
        readline.set_history_length(length)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        readline.write_history_file(path)
