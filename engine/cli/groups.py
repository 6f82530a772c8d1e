"""``motet groups``: a running server's consumer groups, and their parked events.

``motet groups`` lists each group (members, position, lag, in flight, parked
events with their errors); ``motet groups replay GROUP POSITION`` delivers a
parked event again and ``motet groups skip GROUP POSITION`` forgets it (both
need the full-access token).
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import TYPE_CHECKING, Any

from .errors import fail

if TYPE_CHECKING:
    from motet.engine.status import GroupStatus

__all__ = ["add_parser", "format_groups", "run"]


def add_parser(commands: Any, connection_options: Any) -> None:
    """Add ``motet groups`` to the ``commands`` subparsers."""
    groups = commands.add_parser(
        "groups",
        help="list a running server's consumer groups; replay or skip a parked event",
        description="Without arguments: each consumer group with its members, position, "
        "lag, events in flight and parked events. 'replay GROUP POSITION' delivers a "
        "parked event again; 'skip GROUP POSITION' forgets it.",
    )
    connection_options(groups)
    groups.add_argument(
        "action",
        nargs="?",
        choices=["list", "replay", "skip"],
        default="list",
        help="(default: %(default)s)",
    )
    groups.add_argument("group", nargs="?", help="the group (replay, skip)")
    groups.add_argument("position", nargs="?", type=_position, help="the parked event's position")
    groups.add_argument("--json", action="store_true", help="print JSON")


def _position(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a position is a whole number >= 1, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a position is a whole number >= 1, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run ``motet groups``."""
    import msgspec

    from motet.engine import MotetError

    from .remote import _connect

    if args.action != "list" and (args.group is None or args.position is None):
        fail(f"'motet groups {args.action}' needs a GROUP and a POSITION")
    connection, server = _connect(args)
    try:
        if args.action == "list":
            if args.json:
                print(json.dumps(msgspec.to_builtins(server.groups), indent=2, sort_keys=True))
            else:
                print(format_groups(server.groups))
            return 0
        reply = connection.request(
            {"op": args.action, "group": args.group, "position": args.position}
        )
    except MotetError as exc:
        fail(str(exc))
    finally:
        connection.close()
    if not reply["ok"]:
        fail(f"{reply['error']['code']}: {reply['error']['message']}")
    if args.json:
        print(json.dumps(reply["result"], sort_keys=True))
    else:
        done = "replaying" if args.action == "replay" else "skipped"
        print(f"{done} position {args.position} of group {args.group!r}")
    return 0


def format_groups(groups: list[GroupStatus]) -> str:
    """The groups as ``motet groups`` prints them."""
    if not groups:
        return "no consumer groups"
    lines = [
        f"{'group':<20}{'members':>8}{'position':>12}{'lag events':>12}{'lag s':>9}"
        f"{'in flight':>10}{'parked':>8}"
    ]
    for group in groups:
        lines.append(
            f"{group.name:<20}{len(group.members):>8}{group.position:>12,}"
            f"{group.lag_events:>12,}{group.lag_seconds:>9.3f}{group.in_flight:>10,}"
            f"{len(group.parked):>8}"
        )
        for parked in group.parked:
            at = datetime.datetime.fromtimestamp(parked.parked_at, datetime.UTC)
            replaying = " (replaying)" if parked.replaying else ""
            lines.append(
                f"  parked {parked.position} {parked.stream} after {parked.attempts} "
                f"attempts at {at:%Y-%m-%d %H:%M:%S}Z{replaying}: {parked.error}"
            )
    return "\n".join(lines)
