"""``motet client`` reads short-form values by the field's type in the
message schemas the server sends with its status: the real console script
(one-shot and stdin) against a real ``motet serve`` of an app whose text
fields look like numbers and booleans, and of the example app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.cli.test_cli import documents, one_line_error

SHOP = Path(__file__).with_name("shop_app.py")


def serve_shop(motet: Any, motet_server: Any) -> Any:
    shutil.copy(SHOP, motet.directory / "shop.py")
    return motet_server("--app", "shop:app")


def test_text_fields_keep_number_and_boolean_looking_values(motet: Any, motet_server: Any) -> None:
    port = str(serve_shop(motet, motet_server).port)
    result = motet.run(
        "client",
        "--port",
        port,
        "AddItem list_id=home item_id=1 title=milk",
        "AddItem list_id=home item_id=1001 title=true count=2 price=1.5 urgent=true unit=kg",
        "AddItem list_id=home item_id=x title=null price=null",
        "GetItems list_id=home @after=3",
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    *acks, items = documents(result.stdout)
    assert [ack["version"] for ack in acks] == [1, 2, 3]
    fields = ("item_id", "title", "count", "price", "urgent", "unit")
    assert [tuple(item[name] for name in fields) for item in items] == [
        ("1", "milk", 1, None, False, "piece"),
        ("1001", "true", 2, 1.5, True, "kg"),
        ("x", "null", 1, None, False, "piece"),  # null empties only optional fields
    ]


def test_a_value_that_cannot_be_the_fields_type_says_what_to_write(
    motet: Any, motet_server: Any
) -> None:
    port = str(serve_shop(motet, motet_server).port)
    cases = {
        "AddItem list_id=h item_id=1 title=t count=1.5": "count must be a whole number, got '1.5'",
        "AddItem list_id=h item_id=1 title=t price=abc": (
            "price must be a number or null, got 'abc'"
        ),
        "AddItem list_id=h item_id=1 title=t urgent=yes": "urgent must be true or false, got 'yes'",
        "AddItem list_id=h item_id=1 title=t unit=g": "unit must be one of 'kg', 'piece', got 'g'",
        "AddItem list_id=h item_id=1 titel=t": (
            "AddItem has no field 'titel' (did you mean 'title'?); "
            "fields: list_id, item_id, title, count, price, urgent, unit"
        ),
        "GetItems list_id=h @after=soon": "@after must be a whole number, got 'soon'",
        "AddItm list_id=h": "unknown request 'AddItm' (did you mean 'AddItem'?); ",
        "additem list_id=h": "unknown request 'additem' (did you mean 'AddItem'?); ",
    }
    for line, message in cases.items():
        stderr = one_line_error(motet.run("client", "--port", port, line), 1)
        assert stderr.startswith(f"motet: error: argument 1: {message}"), stderr
    # Nothing was sent.
    result = motet.run("client", "--port", port, "--json", "read List-h")
    assert json.loads(result.stdout)["result"]["events"] == []


def test_stdin_scripts_read_values_by_type_too(motet: Any, motet_server: Any) -> None:
    port = str(serve_shop(motet, motet_server).port)
    script = "AddItem list_id=l item_id=7 title=1234\nAddItem list_id=l item_id=8 title=t count=x\n"
    result = motet.run("client", "--port", port, input=script)
    assert result.returncode == 1
    assert result.stderr == "motet: error: line 2: count must be a whole number, got 'x'\n"
    ok, refused = (json.loads(line) for line in result.stdout.splitlines())
    assert ok["ok"] is True and ok["result"]["version"] == 1
    assert refused["error"] == {
        "code": "bad_request",
        "message": "count must be a whole number, got 'x'",
    }


def test_the_example_apps_text_fields_take_digits(motet: Any, motet_server: Any) -> None:
    port = str(motet_server().port)
    result = motet.run(
        "client",
        "--port",
        port,
        "CreateUser user_id=42 name=Ann email=ann@example.org password=1234 city=null",
        "PlaceOrder user_id=42 order_id=1001 amount=12",
        "GetUserById user_id=42 @after=2",
        "DeleteUser user_id=42 @command_id=1001",
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    *_, user, deleted = documents(result.stdout)
    assert (user["user_id"], user["city"], user["order_count"], user["total_spent"]) == (
        "42",
        None,
        1,
        12.0,
    )
    assert deleted["version"] == 3


def test_the_status_reply_carries_the_message_schemas(motet: Any, motet_server: Any) -> None:
    port = str(serve_shop(motet, motet_server).port)
    result = motet.run("client", "--port", port, "--json", "status")
    schemas = json.loads(result.stdout)["result"]["schemas"]
    assert schemas["messages"] == {
        "AddItem": {"$ref": "#/$defs/AddItem"},
        "GetItems": {"$ref": "#/$defs/GetItems"},
    }
    add_item = schemas["$defs"]["AddItem"]
    assert add_item["properties"]["item_id"] == {"type": "string"}
    assert add_item["properties"]["count"] == {"type": "integer", "default": 1}
