"""The interactive ``motet client`` on a pseudo-terminal against a real
server: ``help`` and ``help TYPE`` from the server's own schemas, Tab
completion, "did you mean", the status table, and reconnecting when the
server restarts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.cli.test_cli import ANSI, Reader, interactive_client

SHOP = Path(__file__).with_name("shop_app.py")


class Screen:
    """Types lines into the client and reads what it printed."""

    def __init__(self, controller: int) -> None:
        self.controller = controller
        self.reader = Reader(controller)

    def prompt(self, timeout: float = 10.0) -> str:
        return ANSI.sub(b"", self.reader.read_until(b"motet> ", timeout)).decode()

    def type(self, keys: str) -> None:
        os.write(self.controller, keys.encode())

    def answer(self, line: str, timeout: float = 10.0) -> str:
        """Type ``line``; return what was printed after its echo, up to the next prompt."""
        self.type(line + "\n")
        echo, _, rest = self.prompt(timeout).partition("\n")
        assert echo == line, (echo, rest)
        return rest.removesuffix("motet> ")


def serve_shop(motet: Any, motet_server: Any, *args: str) -> Any:
    shutil.copy(SHOP, motet.directory / "shop.py")
    return motet_server("--app", "shop:app", *args)


def test_help_describes_this_servers_requests_in_plain_text(motet: Any, motet_server: Any) -> None:
    server = serve_shop(motet, motet_server)
    with interactive_client(motet, server.port) as (session, controller):
        screen = Screen(controller)
        screen.prompt()
        help_text = screen.answer("help")
        assert "Commands of this server:\n  AddItem " in help_text
        assert "Put an item on a shopping list (count of it)." in help_text  # no ``markup``
        assert "Queries of this server:\n  GetItems " in help_text
        assert "Short form: TYPE field=value" in help_text
        for absent in ("``", ":func:", "CreateUser", "GetUserById"):
            assert absent not in help_text
        assert screen.answer("?") == help_text

        described = screen.answer("help AddItem")
        assert described.startswith("AddItem (command)\n")
        lines = [line.split() for line in described.splitlines()]
        assert ["item_id", "str", "required"] in lines
        assert ["count", "int", "default", "1"] in lines
        assert ["price", "float", "|", "null", "default", "null"] in lines
        assert ["urgent", "bool", "default", "false"] in lines
        assert "Usage: AddItem list_id=STR item_id=STR title=STR [count=INT]" in described
        assert screen.answer("help additem") == described  # case does not matter
        assert screen.answer("help GetItems").startswith("GetItems (query)\n")
        assert screen.answer("help PlaceOrdr") == (
            "error: no request type 'PlaceOrdr'; known: AddItem, GetItems\n"
        )
        assert screen.answer("help GetItem") == (
            "error: no request type 'GetItem' (did you mean 'GetItems'?); "
            "known: AddItem, GetItems\n"
        )
        assert screen.answer("AddItm list_id=l").startswith(
            "error: unknown request 'AddItm' (did you mean 'AddItem'?); "
        )
        screen.type("\x04")
        assert session.wait(10) == 0


def test_the_example_servers_help_names_its_requests(motet: Any, motet_server: Any) -> None:
    server = motet_server()
    with interactive_client(motet, server.port) as (session, controller):
        screen = Screen(controller)
        screen.prompt()
        help_text = screen.answer("help")
        for name in ("CreateUser", "PlaceOrder", "GetUserById", "TopSpenders"):
            assert f"\n  {name} " in help_text
        described = screen.answer("help PlaceOrder")
        assert ["amount", "float", "required"] in [line.split() for line in described.splitlines()]
        assert screen.answer("placeorder user_id=u1").startswith(
            "error: unknown request 'placeorder' (did you mean 'PlaceOrder'?); "
        )
        screen.type("\x04")
        assert session.wait(10) == 0


def test_tab_completes_request_and_field_names(motet: Any, motet_server: Any) -> None:
    server = serve_shop(motet, motet_server)
    with interactive_client(motet, server.port) as (session, controller):
        screen = Screen(controller)
        screen.prompt()
        # "AddI" + Tab -> "AddItem ", "li" + Tab -> "list_id=", and so on.
        screen.type("AddI\tli\thome it\t1 tit\tmilk cou\t3\n")
        printed = screen.prompt()
        assert printed.startswith("AddItem list_id=home item_id=1 title=milk count=3\n"), printed
        assert '"version": 1' in printed
        screen.type("GetI\tli\thome @af\t1\n")
        printed = screen.prompt()
        assert printed.startswith("GetItems list_id=home @after=1\n"), printed
        assert '"count": 3' in printed and '"item_id": "1"' in printed
        screen.type("\x04")
        assert session.wait(10) == 0


def test_status_is_the_table(motet: Any, motet_server: Any) -> None:
    server = serve_shop(motet, motet_server)
    with interactive_client(motet, server.port) as (session, controller):
        screen = Screen(controller)
        screen.prompt()
        table = screen.answer("status")
        assert table.startswith("head position  0\ndurability     sync\n"), table
        assert "projection" in table and "lag events" in table
        assert "\nitems " in table
        assert "{" not in table
        screen.type("\x04")
        assert session.wait(10) == 0


def test_the_client_reconnects_when_the_server_restarts(motet: Any, motet_server: Any) -> None:
    server = serve_shop(motet, motet_server)
    port = str(server.port)
    with interactive_client(motet, server.port) as (session, controller):
        screen = Screen(controller)
        screen.prompt()
        assert screen.answer("ping") == '"pong"\n'
        assert server.terminate() == 0

        # Down: a few attempts, each said, then the prompt goes on.
        printed = screen.answer("ping", timeout=20)
        assert printed.count(f"reconnecting to 127.0.0.1:{port} (") == 3, printed
        assert printed.endswith("; the next request tries again\n"), printed
        assert "Traceback" not in printed
        assert session.poll() is None

        # Back on the same port: the next request reconnects and is answered.
        restarted = serve_shop(motet, motet_server, "--port", port)
        assert restarted.port == server.port
        printed = screen.answer("GetItems list_id=none", timeout=20)
        assert f"reconnected to 127.0.0.1:{port}\n" in printed, printed
        assert printed.endswith("[]\n"), printed
        # A command whose connection was lost is not sent again without a command id.
        assert restarted.terminate() == 0
        restarted = serve_shop(motet, motet_server, "--port", port)
        printed = screen.answer("AddItem list_id=l item_id=1 title=t", timeout=20)
        assert "the command was not sent again" in printed, printed
        printed = screen.answer("AddItem list_id=l item_id=1 title=t @command_id=c1")
        assert '"version": 1' in printed
        screen.type("\x04")
        assert session.wait(10) == 0
