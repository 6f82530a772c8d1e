"""The ``motet`` command line.

``motet demo`` runs a short scripted session of the example app through the
embedded API. The engine is imported only when a command runs, so ``--help``
and usage errors stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

import msgspec

__all__ = ["main"]


class _Exit(Exception):
    """Raised instead of ``SystemExit`` so :func:`main` can return the code."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)

    def error(self, message: str) -> NoReturn:
        # One line, without argparse's usage dump.
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _build_parser() -> tuple[_Parser, list[str]]:
    """The parser and the names of its commands."""
    parser = _Parser(
        prog="motet",
        description="Motet: an embedded event-sourcing engine for trio.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a short session of the example app (users and orders)",
        description="Send a few commands to the example app through the embedded API "
        "and print the resulting events.",
    )
    demo.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="store events in this directory (default: in memory, discarded on exit)",
    )
    return parser, sorted(commands.choices)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``motet`` command line with ``argv`` (default: ``sys.argv[1:]``)
    and return the process exit status: 0 on success, 2 for a usage error."""
    parser, known = _build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The top level takes no option values, so its first bare word is the command;
    # checked here to answer a typo in one line rather than argparse's usage dump.
    command = next((arg for arg in args_list if not arg.startswith("-")), None)
    if command is not None and command not in known:
        sys.stderr.write(
            f"motet: unknown command {command!r} (choose from: {', '.join(known)}); "
            "see 'motet --help'\n"
        )
        return 2
    try:
        args = parser.parse_args(args_list)
    except _Exit as exit_:
        return exit_.status
    if args.command == "demo":
        return _demo(args.data)
    raise AssertionError(f"unhandled command {args.command!r}")


def _demo(data: str | None) -> int:
    import trio

    trio.run(_run_demo, data)
    return 0


async def _run_demo(data: str | None) -> None:
    from engine import CommandRejected, open_engine
    from engine.example import CreateUser, DeleteUser, PlaceOrder, UpdateUser, app

    commands = [
        CreateUser(user_id="ada", name="Ada", email="ada@example.org", password="s3cret"),
        UpdateUser(user_id="ada", city="London"),
        PlaceOrder(user_id="ada", order_id="o-1", amount=12.5),
        PlaceOrder(user_id="ada", order_id="o-2", amount=-5),
        CreateUser(user_id="bob", name="Bob", email="bob-at-example", password="pw"),
        PlaceOrder(user_id="ada", order_id="o-3", amount=30.0),
        DeleteUser(user_id="ada"),
        PlaceOrder(user_id="ada", order_id="o-4", amount=1.0),
    ]
    async with open_engine(data, app) as engine:
        for command in commands:
            name = type(command).__name__
            try:
                ack = await engine.send(command)
            except CommandRejected as exc:
                print(f"{name:<11} rejected: {exc}")
            else:
                print(f"{name:<11} ok: {ack.stream} version {ack.version} position {ack.position}")
        print("\nstream User-ada:")
        for event in await engine.read_stream("User-ada"):
            print(f"  {event.version:>2}  {event.type:<12} {_describe(event.data)}")


def _describe(data: msgspec.Struct) -> str:
    fields = msgspec.structs.asdict(data)
    if "password_hash" in fields:
        fields["password_hash"] = fields["password_hash"][:24] + "..."
    return ", ".join(f"{key}={value!r}" for key, value in fields.items() if value is not None)
