"""The ``motet`` command line as a user types it: the real console script in
a subprocess (``motet`` and ``motet_server`` in conftest.py), its exit status,
what it prints on stdout and stderr, and the interactive prompt driven through
a pseudo-terminal.

Every user mistake must be one line on stderr and exit 2 (usage) or 1
(anything else), never a traceback.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port

CREATE_ANN = 'CreateUser user_id=u1 name="Ann Lee" email=ann@example.org password=pw city=Oslo'


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """Check that ``result`` failed with ``status`` and said why in one line; return it."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    return result.stderr


def documents(text: str) -> list[Any]:
    """The JSON values printed one after another (pretty or not) in ``text``."""
    decoder = json.JSONDecoder()
    values, index = [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        value, index = decoder.raw_decode(text, index)
        values.append(value)
    return values


# --- help and usage errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        ([], ["serve", "client", "status", "forget", "inspect", "demo", "--version", "benchmarks"]),
        (
            ["serve"],
            [
                "--data",
                "--app",
                "--port",
                "--metrics-port",
                "--durability",
                "--token-file",
                "--tls-cert",
                "--tls-key",
                "--max-connections",
                "SIGTERM",
            ],
        ),
        (["client"], ["--host", "--port", "--token", "--tls", "--cafile", "--json", "REQUEST"]),
        (["status"], ["--host", "--port", "--json"]),
        (["forget"], ["SUBJECT", "--token-file", "--json", "full-access token", "redacted"]),
        (["inspect"], ["--data", "--stream", "--from", "--limit", "--json", "read-only"]),
        (["demo"], ["--data"]),
    ],
)
def test_help(motet: Any, args: list[str], mentions: list[str]) -> None:
    result = motet.run(*args, "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"usage: {' '.join(['motet', *args])} ")
    for word in mentions:
        assert word in result.stdout, word


def test_version(motet: Any) -> None:
    result = motet.run("--version")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"motet {importlib.metadata.version('motet')}\n"


@pytest.mark.parametrize("args", [["bench"], ["bench", "--help"], ["bench", "--users", "10"]])
def test_bench_is_not_a_command_and_says_where_the_benchmarks_are(
    motet: Any, args: list[str]
) -> None:
    stderr = one_line_error(motet.run(*args), 2)
    assert stderr.startswith(
        "motet: unknown command 'bench' (choose from: backup, client, compact, delete-stream, "
    )
    assert "python -m benchmarks.seed_workload" in stderr
    assert "make bench" in stderr


# What `motet --help` must not need: the runtime, the store, the metrics.
HEAVY_MODULES = ("trio", "lmdb", "prometheus_client", "motet.actors")


def heavy_modules_loaded(*statements: str) -> set[str]:
    """The :data:`HEAVY_MODULES` a fresh interpreter has loaded after running
    ``statements`` with stdout silenced."""
    program = "\n".join(
        [
            "import contextlib, io, json, sys",
            "with contextlib.redirect_stdout(io.StringIO()):",
            *(f"    {statement}" for statement in statements),
            f"print(json.dumps([name for name in {HEAVY_MODULES!r} if name in sys.modules]))",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["serve", "--help"], ["client", "--help"], ["inspect", "--help"]],
)
def test_help_and_version_import_no_engine(argv: list[str]) -> None:
    # Importing motet.engine.cli runs the lazy package face motet.engine
    # first: neither may load anything heavy.
    assert heavy_modules_loaded("import motet.engine") == set()
    assert heavy_modules_loaded("from motet.engine.cli import main", f"main({argv!r})") == set()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["frob"],
            "motet: unknown command 'frob' "
            "(choose from: backup, client, compact, delete-stream, demo, export, forget, "
            "groups, import, inspect, restore, retention, serve, status, verify)",
        ),
        ([], "the following arguments are required: COMMAND"),
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (["serve", "--port", "abc"], "a port must be a number, got 'abc'"),
        (["serve", "--port", "70000"], "a port must be between 0 and 65535, got 70000"),
        (["serve", "--durability", "maybe"], "invalid choice: 'maybe'"),
        (["client", "--port"], "expected one argument"),
        (["serve", "--token", "t", "--token-file", "f"], "not allowed with argument"),
        (["serve", "--app", "nope:app"], "cannot import module 'nope' for --app"),
        (["serve", "--app", "motet.engine.example:user"], "is not a motet App (found Aggregate)"),
        (["serve", "--app", "motet.engine.example"], "--app must look like MODULE:ATTR"),
        (["serve", "--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["serve", "--max-connections", "0"], "argument --max-connections: must be >= 1, got 0"),
        (["serve", "--node-id", "n1"], "--node-id needs --store postgresql://..."),
        (["serve", "--store", "postgresql://u@h/db", "--advertise", "h:1"], "needs --node-id"),
        (
            ["serve", "--store", "postgresql://u@h/db", "--node-id", "n", "--advertise", "x"],
            "--advertise must be HOST:PORT, got 'x'",
        ),
        (["serve", "--partitions", "4"], "--partitions applies to a new --store postgresql://"),
        (["serve", "--partitions", "0"], "must be >= 1, got 0"),
        (["serve", "--commit-timeout", "5"], "--commit-timeout applies to --store postgresql://"),
        (["serve", "--commit-timeout", "0"], "must be > 0 seconds, got 0"),
        (["serve", "--peer-cafile", "ca.pem"], "--peer-cafile goes with --node-id and --tls-cert"),
        (["serve", "--lease-ttl", "0"], "must be > 0 seconds, got 0"),
        (["serve", "--token-file", "missing"], "cannot read --token-file"),
        (["client", "--cafile", "ca.pem", "ping"], "--cafile needs --tls"),
        (["inspect", "--limit", "0"], "--limit must be >= 1, got 0"),
        (["inspect", "--from", "-1"], "--from must be >= 0, got -1"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(motet: Any, args: list[str], message: str) -> None:
    stderr = one_line_error(motet.run(*args, timeout=20), 2)
    assert message in stderr
    assert not (motet.directory / "motet-data").exists()  # nothing was started


# --- serve ----------------------------------------------------------------------------


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d [\d:,]+ (DEBUG|INFO|WARNING) motet\.\S+: .*")


def serve_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a ``motet serve`` that failed with status 1, after
    the log lines it may have written before it failed."""
    *logged, last = result.stderr.splitlines(keepends=True)
    assert all(LOG_LINE.fullmatch(line.rstrip("\n")) for line in logged), result.stderr
    return one_line_error(
        subprocess.CompletedProcess(result.args, result.returncode, result.stdout, last), 1
    )


def test_serve_on_a_file_is_one_line_and_exit_1(motet: Any) -> None:
    not_a_directory = motet.directory / "file"
    not_a_directory.write_text("hello\n")
    args = ["--data", str(not_a_directory), "--port", "0", "--metrics-port", "0"]
    stderr = one_line_error(motet.run("serve", *args), 1)
    assert stderr == f"motet: error: {not_a_directory} is a file, not a Motet store directory\n"
    assert not_a_directory.read_text() == "hello\n"


@pytest.mark.parametrize("option", ["--port", "--metrics-port"])
def test_serve_on_a_port_in_use_is_one_line_and_exit_1(motet: Any, option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ["--data", "data", "--port", "0", "--metrics-port", "0", option, port]
        stderr = serve_error(motet.run("serve", *args))
    assert stderr.startswith("motet: error: cannot serve: ")
    assert "in use" in stderr


def test_a_second_server_on_the_same_data_is_refused(motet: Any, motet_server: Any) -> None:
    # Positions are counted by the writer, so two writers would overwrite each
    # other's acknowledged events.
    first = motet_server()
    args = ["--data", str(first.data), "--port", "0", "--metrics-port", "0"]
    stderr = serve_error(motet.run("serve", *args))
    assert stderr == (
        f"motet: error: {first.data} is in use: another process has this store open for writing\n"
    )
    port = str(first.port)
    assert motet.run("client", "--port", port, CREATE_ANN).returncode == 0
    assert (
        json.loads(motet.run("inspect", "--data", str(first.data), "--json").stdout)[
            "head_position"
        ]
        == 1
    )
    assert first.terminate() == 0
    # The lock goes with the process that held it.
    second = motet_server()
    again = motet.run("client", "--port", str(second.port), CREATE_ANN)
    assert (again.returncode, again.stdout) == (1, "error [rejected]: user 'u1' already exists\n")
    result = motet.run("client", "--port", str(second.port), "--json", "status")
    assert json.loads(result.stdout)["result"]["head_position"] == 1


# --- serve --app: a domain file in the current folder -----------------------------------

TODO = textwrap.dedent(
    """
    import msgspec
    from motet.engine import Aggregate, App, CommandRejected


    class AddTodo(msgspec.Struct, frozen=True, kw_only=True, tag="AddTodo"):
        list_id: str
        text: str


    class TodoAdded(msgspec.Struct, frozen=True, kw_only=True, tag="TodoAdded"):
        text: str


    class Todos(msgspec.Struct, frozen=True, kw_only=True, tag="Todos"):
        items: tuple[str, ...] = ()


    def decide(state: Todos, command: AddTodo) -> list[TodoAdded]:
        if not command.text.strip():
            raise CommandRejected("text is required")
        return [TodoAdded(text=command.text)]


    def evolve(state: Todos, event: TodoAdded) -> Todos:
        return Todos(items=(*state.items, event.text))


    todo = Aggregate(
        name="Todo",
        state_type=Todos,
        initial=Todos(),
        decide=decide,
        evolve=evolve,
        commands={AddTodo: "list_id"},
        events=(TodoAdded,),
    )
    app = App(aggregates=(todo,))
    """
)

ADD_MILK = "AddTodo list_id=l1 text=milk"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("spec", ["todo:app", "./todo.py:app", "todo.py:app", "ABSOLUTE:app"])
def test_serve_an_app_from_the_current_folder(motet: Any, motet_server: Any, spec: str) -> None:
    path = write(motet.directory, "todo.py", TODO)
    spec = spec.replace("ABSOLUTE", str(path))
    server = motet_server("--app", spec)
    assert f"serving {spec} from " in server.log()
    result = motet.run("client", "--port", str(server.port), "--json", ADD_MILK)
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout)["result"] == {"stream": "Todo-l1", "version": 1, "position": 1}
    assert server.terminate() == 0
    events = motet.run(
        "inspect", "--data", str(server.data), "--app", spec, "--stream", "Todo-l1", "--json"
    )
    assert events.returncode == 0, events.stderr
    added = [event["data"] for event in json.loads(events.stdout)]
    assert added == [{"type": "TodoAdded", "text": "milk"}]


def test_a_file_elsewhere_imports_its_own_siblings(motet: Any, motet_server: Any) -> None:
    messages, _, rest = TODO.partition("\n\ndef decide")
    write(motet.directory, "apps/messages.py", messages)
    write(
        motet.directory,
        "apps/todo.py",
        "from motet.engine import Aggregate, App, CommandRejected\n"
        "from messages import AddTodo, TodoAdded, Todos\n\n\ndef decide" + rest,
    )
    server = motet_server("--app", "apps/todo.py:app")
    result = motet.run("client", "--port", str(server.port), ADD_MILK)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("files", "spec", "message"),
    [
        (
            {},
            "todo:app",
            "motet: error: cannot import module 'todo' for --app: No module named 'todo' "
            "(looked in {cwd} and on sys.path; give its file, e.g. --app ./todo.py:app, "
            "or add its directory to PYTHONPATH)\n",
        ),
        (
            {},
            "./todo.py:app",
            "motet: error: no file './todo.py' for --app (the current directory is {cwd})\n",
        ),
        (
            {"todo.py": TODO},
            "todo.txt:app",
            "motet: error: cannot import module 'todo.txt' for --app: ",
        ),
        (
            {"todo.py": TODO},
            "./todo.txt:app",
            "motet: error: --app ./todo.txt:app: './todo.txt' is not a Python file "
            "(give FILE.py:ATTR)\n",
        ),
        (
            {"todo.py": TODO},
            "todo:bank",
            "motet: error: todo has no attribute 'bank' for --app; Apps in it: app\n",
        ),
        (
            {"todo.py": TODO},
            "./todo.py:todo",
            "motet: error: ./todo.py:todo is not a motet App (found Aggregate); Apps in it: app\n",
        ),
        (
            {"todo.py": "import msgspec\n\nclass Broken(\n"},
            "todo:app",
            "motet: error: --app todo:app: {cwd}/todo.py line 3: ",
        ),
        (
            {"todo.py": "import msgspec\nimport not_installed_here\n"},
            "./todo.py:app",
            "motet: error: --app ./todo.py:app: importing {cwd}/todo.py failed at "
            "{cwd}/todo.py line 2: ModuleNotFoundError: No module named 'not_installed_here' "
            "(is 'not_installed_here' installed for ",
        ),
        (
            {"todo.py": "import msgspec\n\nraise RuntimeError('no database configured')\n"},
            "todo:app",
            "motet: error: --app todo:app: importing module 'todo' failed at {cwd}/todo.py "
            "line 3: RuntimeError: no database configured (to see the whole traceback, run: "
            'python -c "import todo")\n',
        ),
        (
            {"my-todo.py": TODO},
            "./my-todo.py:app",
            "motet: error: --app ./my-todo.py:app: a file named 'my-todo.py' cannot be "
            "imported; rename it to letters, digits and underscores, e.g. todo_app.py\n",
        ),
    ],
)
def test_an_app_that_cannot_be_imported_is_one_line_and_exit_2(
    motet: Any, files: dict[str, str], spec: str, message: str
) -> None:
    for name, text in files.items():
        write(motet.directory, name, text)
    serve = ["serve", "--app", spec, "--port", "0", "--metrics-port", "0"]
    stderr = one_line_error(motet.run(*serve), 2)
    assert stderr.startswith(message.format(cwd=motet.directory)), stderr
    assert not (motet.directory / "motet-data").exists()


# --- client ---------------------------------------------------------------------------


def test_client_one_shot_prints_pretty_json(motet: Any, motet_server: Any) -> None:
    server = motet_server()
    port = str(server.port)
    result = motet.run("client", "--port", port, CREATE_ANN, "GetUserById user_id=u1 @after=1")
    assert (result.returncode, result.stderr) == (0, "")
    ack, user = documents(result.stdout)
    assert ack == {"stream": "User-u1", "version": 1, "position": 1}
    assert user == {
        "user_id": "u1",
        "name": "Ann Lee",
        "email": "ann@example.org",
        "city": "Oslo",
        "order_count": 0,
        "total_spent": 0.0,
        "last_order_at": None,
    }
    assert '{\n  "position": 1,\n  "stream": "User-u1",\n  "version": 1\n}\n' in result.stdout

    # An error reply is printed for people, and the exit status says it failed.
    result = motet.run("client", "--port", port, "ping", "GetUserById user_id=nobody")
    assert result.returncode == 1
    assert result.stdout == "\"pong\"\n error [not_found]: no user 'nobody'\n".replace("\n ", "\n")
    assert result.stderr == ""
    result = motet.run("client", "--port", port, CREATE_ANN)
    assert result.returncode == 1
    assert result.stdout == "error [rejected]: user 'u1' already exists\n"

    # --json: one JSON line per reply, the id as given (the argument's number when not).
    result = motet.run(
        "client", "--port", port, "--json", "read User-u1 0 1", '{"id": 7, "op": "ping"}'
    )
    assert result.returncode == 0, result.stderr
    read, pong = (json.loads(line) for line in result.stdout.splitlines())
    assert read["id"] == 1 and read["ok"] is True
    assert [(e["version"], e["type"]) for e in read["result"]["events"]] == [(1, "UserCreated")]
    assert "password" not in read["result"]["events"][0]["data"]
    assert pong == {"id": 7, "ok": True, "result": "pong"}

    # A short form it cannot understand: one line naming the argument.
    stderr = one_line_error(motet.run("client", "--port", port, "CreateUser user_id"), 1)
    assert stderr == "motet: error: argument 1: expected key=value, got 'user_id'\n"
    # With --json, that argument gets its JSON line too.
    result = motet.run("client", "--port", port, "--json", "ping", "CreateUser user_id")
    assert result.returncode == 1
    assert result.stderr == "motet: error: argument 2: expected key=value, got 'user_id'\n"
    refused = {"code": "bad_request", "message": "expected key=value, got 'user_id'"}
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"id": 1, "ok": True, "result": "pong"},
        {"id": 2, "ok": False, "error": refused},
    ]


def test_client_script_from_stdin(motet: Any, motet_server: Any) -> None:
    server = motet_server()
    script = "\n".join(
        [
            "# set up one user",
            "",
            "   ",
            "CreateUser user_id=u2 name=Bo email=bo@example.org password=pw",
            '{"id": "mine", "op": "query", "type": "GetUserById", '
            '"data": {"user_id": "u2"}, "after": 1}',
            "CreateUser user_id",
            "read User-u2",
            "GetUserById user_id=ghost",
            "ping",
        ]
    )
    result = motet.run("client", "--port", str(server.port), input=script + "\n")
    assert result.returncode == 1
    assert result.stderr == "motet: error: line 6: expected key=value, got 'user_id'\n"
    # One reply line per request line, the line's number as its id unless it gave one.
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], r["ok"]) for r in replies] == [
        (4, True),
        ("mine", True),
        (6, False),
        (7, True),
        (8, False),
        (9, True),
    ]
    assert replies[0]["result"] == {"stream": "User-u2", "version": 1, "position": 1}
    assert replies[1]["result"]["name"] == "Bo"
    assert replies[2]["error"] == {
        "code": "bad_request",
        "message": "expected key=value, got 'user_id'",
    }
    assert [e["type"] for e in replies[3]["result"]["events"]] == ["UserCreated"]
    assert replies[4]["error"] == {"code": "not_found", "message": "no user 'ghost'"}
    assert replies[5]["result"] == "pong"

    # A script without failures exits 0; an empty one prints nothing.
    result = motet.run("client", "--port", str(server.port), input="ping\n# done\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {"id": 1, "ok": True, "result": "pong"}
    result = motet.run("client", "--port", str(server.port), input="")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("command", [["client", "ping"], ["status"], ["status", "--json"]])
def test_nothing_listening_is_one_line_and_exit_1(motet: Any, command: list[str]) -> None:
    port = free_port()
    stderr = one_line_error(motet.run(*command, "--port", str(port)), 1)
    assert stderr.startswith(f"motet: error: cannot connect to 127.0.0.1:{port}: ")
    assert "is 'motet serve' running there?" in stderr


def admitted(port: int) -> socket.socket:
    """A connection the server took (once the readiness probe's has closed)."""
    deadline = time.monotonic() + 10
    while True:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b'{"id": 1, "op": "ping"}\n')
        if b'"pong"' in sock.recv(4096):
            return sock
        sock.close()
        assert time.monotonic() < deadline, "the server never took a connection"
        time.sleep(0.05)


def test_a_server_that_will_not_talk_is_one_line_and_exit_1(
    motet: Any, motet_server: Any, tls_files: Any
) -> None:
    tls = motet_server("--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key))
    stderr = one_line_error(motet.run("status", "--port", str(tls.port)), 1)
    assert stderr == (
        f"motet: error: 127.0.0.1:{tls.port} did not answer: the server closed the "
        "connection (does it serve TLS? then add --tls)\n"
    )
    assert tls.terminate() == 0

    plain = motet_server("--max-connections", "1")
    stderr = one_line_error(motet.run("client", "--port", str(plain.port), "--tls", "ping"), 1)
    assert stderr.startswith(f"motet: error: cannot connect to 127.0.0.1:{plain.port}: ")

    with admitted(plain.port):
        for command in (["status"], ["client", "ping"], ["status", "--token", "t"]):
            stderr = one_line_error(motet.run(*command, "--port", str(plain.port)), 1)
            assert stderr == (
                f"motet: error: 127.0.0.1:{plain.port} did not answer: "
                "too many connections (max 1)\n"
            )


def test_client_subscribe_prints_events_until_interrupted(motet: Any, motet_server: Any) -> None:
    server = motet_server()
    port = str(server.port)
    assert motet.run("client", "--port", port, CREATE_ANN).returncode == 0
    follower = motet.popen(
        "client", "--port", port, "subscribe 0", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert follower.stdout is not None
    output = Reader(follower.stdout.fileno())
    first = output.read_until(b"\n")
    assert re.fullmatch(rb"event 1  User-u1 v1  UserCreated  \{.*\"user_id\": \"u1\"\}\n", first)
    order = "PlaceOrder user_id=u1 order_id=o1 amount=12.5"
    assert motet.run("client", "--port", port, order).returncode == 0
    live = output.read_until(b"\n")
    assert live.startswith(b"event 2  User-u1 v2  OrderPlaced  ")
    assert b'"amount": 12.5' in live
    follower.send_signal(signal.SIGINT)
    assert follower.wait(10) == 0
    assert follower.stderr is not None and follower.stderr.read() == b""


# --- status and inspect -----------------------------------------------------------------


def test_status_as_a_table_and_as_json(motet: Any, motet_server: Any) -> None:
    server = motet_server()
    port = str(server.port)
    assert motet.run("client", "--port", port, CREATE_ANN).returncode == 0
    result = motet.run("status", "--port", port)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[:3] == ["head position  1", "durability     sync", "live actors    1 (User 1)"]
    assert lines[4].split() == ["projection", "state", "position", "lag", "events", "lag", "s"]
    assert lines[5].split()[:3] == ["users", "running", "1"]
    result = motet.run("status", "--port", port, "--json")
    assert result.returncode == 0
    status = json.loads(result.stdout)
    assert status["head_position"] == 1
    assert status["commands"] == ["CreateUser", "DeleteUser", "PlaceOrder", "UpdateUser"]
    assert status["projections"][0]["name"] == "users"


def test_inspect_a_data_directory(motet: Any, motet_server: Any) -> None:
    server = motet_server()
    port, data = str(server.port), str(server.data)
    requests = [
        CREATE_ANN,
        "CreateUser user_id=u2 name=Bo email=bo@example.org password=pw",
        "PlaceOrder user_id=u1 order_id=o1 amount=12.5",
    ]
    assert motet.run("client", "--port", port, *requests).returncode == 0
    # Read-only, so safe beside the running server.
    beside = motet.run("inspect", "--data", data, "--json")
    assert beside.returncode == 0, beside.stderr
    assert json.loads(beside.stdout)["head_position"] == 3
    assert server.terminate() == 0

    result = motet.run("inspect", "--data", data)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        f"store          {data}",
        "head position  3",
        "streams        2",
        "checkpoint     users at position 3",
    ]
    rows = {line.split()[0]: line.split()[1] for line in lines[6:]}
    assert rows == {"User-u1": "2", "User-u2": "1"}
    limited = motet.run("inspect", "--data", data, "--limit", "1").stdout
    assert limited.rstrip().endswith("... 1 more (use --limit)")

    summary = json.loads(motet.run("inspect", "--data", data, "--json").stdout)
    assert summary == {
        "head_position": 3,
        "streams": 2,
        "first_streams": {"User-u1": 2, "User-u2": 1},
        "checkpoints": {"users": 3},
    }

    result = motet.run("inspect", "--data", data, "--stream", "User-u1")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert re.fullmatch(r"v1 +@1 +\d{4}-\d\d-\d\dT[\d:.]+Z  UserCreated", lines[0])
    assert json.loads(lines[1])["name"] == "Ann Lee"
    assert re.fullmatch(r"v2 +@3 +\S+Z  OrderPlaced", lines[2])
    assert json.loads(lines[3])["order_id"] == "o1"

    events = json.loads(
        motet.run("inspect", "--data", data, "--stream", "User-u1", "--json").stdout
    )
    assert [(e["version"], e["position"], e["type"]) for e in events] == [
        (1, 1, "UserCreated"),
        (2, 3, "OrderPlaced"),
    ]
    assert events[1]["data"]["amount"] == 12.5
    assert events[0]["data"]["password_hash"].startswith("pbkdf2_sha256$")
    after = json.loads(
        motet.run("inspect", "--data", data, "--stream", "User-u1", "--from", "1", "--json").stdout
    )
    assert [e["version"] for e in after] == [2]

    stderr = one_line_error(motet.run("inspect", "--data", data, "--stream", "User-zz"), 1)
    assert stderr == f"motet: error: no stream 'User-zz' in {data}\n"


def test_inspect_where_there_is_no_store(motet: Any) -> None:
    missing = motet.directory / "missing"
    stderr = one_line_error(motet.run("inspect", "--data", str(missing)), 1)
    assert "no data.mdb" in stderr
    assert not missing.exists()  # read-only: nothing was created
    other = motet.directory / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a store\n")
    stderr = one_line_error(motet.run("inspect", "--data", str(other)), 1)
    assert "no data.mdb" in stderr
    assert sorted(path.name for path in other.iterdir()) == ["notes.txt"]


# --- demo -------------------------------------------------------------------------------


def test_demo(motet: Any) -> None:
    result = motet.run("demo")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == "CreateUser  ok: User-ada version 1 position 1"
    assert "PlaceOrder  rejected: amount must be > 0, got -5" in lines
    assert "CreateUser  rejected: email 'bob-at-example' is not a valid address" in lines
    assert "PlaceOrder  rejected: user 'ada' was deleted" in lines
    assert "stream User-ada:" in lines
    assert [line.split()[1] for line in lines[lines.index("stream User-ada:") + 1 :]] == [
        "UserCreated",
        "UserUpdated",
        "OrderPlaced",
        "OrderPlaced",
        "UserDeleted",
    ]
    assert "s3cret" not in result.stdout
    assert not (motet.directory / "motet-data").exists()  # in memory by default


# --- the interactive prompt ---------------------------------------------------------------

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")


class Reader:
    """Reads a file descriptor (a pipe or a pty) with deadlines."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def __repr__(self) -> str:
        return f"<Reader fd={self.fd} buffered={len(self.buffer)}>"

    def _fill(self, deadline: float) -> bool:
        """Read what comes before ``deadline``; False at end of file."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65_536)
        except OSError:  # EIO: the pty's other side closed
            data = b""
        self.buffer += data
        return bool(data)

    def read_until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        """Everything up to and including ``marker``."""
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            if time.monotonic() > deadline or not self._fill(deadline):
                raise AssertionError(f"no {marker!r} within {timeout} s; got {self.buffer!r}")
        end = self.buffer.index(marker) + len(marker)
        text, self.buffer = self.buffer[:end], self.buffer[end:]
        return text

    def read_to_end(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            if time.monotonic() > deadline:
                raise AssertionError(f"no end of output within {timeout} s")
        text, self.buffer = self.buffer, b""
        return text


@contextmanager
def interactive_client(motet: Any, port: int) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``motet client`` on a pseudo-terminal wide enough that readline never
    scrolls a line sideways; yields the process and the controlling end."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 500, 0, 0))
    try:
        session = motet.popen(
            "client",
            "--port",
            str(port),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env={**motet.env, "TERM": "dumb"},
            start_new_session=True,
        )
        os.close(terminal)
        terminal = -1
        yield session, controller
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)


def test_interactive_session_in_a_terminal(motet: Any, motet_server: Any) -> None:
    server = motet_server()
    with interactive_client(motet, server.port) as (session, controller):
        screen = Reader(controller)

        def answer(line: str) -> str:
            """Type ``line``; return what was printed before the next prompt."""
            os.write(controller, line.encode() + b"\n")
            printed = ANSI.sub(b"", screen.read_until(b"motet> ")).decode()
            echo, _, rest = printed.partition("\n")
            assert echo == line
            return rest.removesuffix("motet> ")

        greeting = ANSI.sub(b"", screen.read_until(b"motet> ")).decode()
        assert greeting.startswith(f"connected to 127.0.0.1:{server.port}.")
        assert json.loads(answer(CREATE_ANN)) == {"stream": "User-u1", "version": 1, "position": 1}
        assert json.loads(answer("GetUserById user_id=u1 @after=1"))["name"] == "Ann Lee"
        help_text = answer("help")
        assert "Short form: TYPE field=value" in help_text
        assert "Commands of this server:\n  CreateUser " in help_text
        assert answer("GetUserById user_id") == "error: expected key=value, got 'user_id'\n"
        assert answer("GetUserById user_id=u1 @command_id=x") == (
            "error: @command_id is not an option of a query; use @after, @timeout\n"
        )
        assert answer("GetUserById user_id=nobody") == "error [not_found]: no user 'nobody'\n"
        assert answer("# only a comment") == ""
        os.write(controller, b"\x04")  # Ctrl-D
        rest = ANSI.sub(b"", screen.read_to_end()).decode()
        assert session.wait(10) == 0
        assert "Traceback" not in rest
    history = (motet.home / ".motet_history").read_text()
    for typed in ("GetUserById", "@after=1", "help"):
        assert typed in history
    assert "password" not in history  # the CreateUser line gave one


def test_interactive_prompt_after_the_server_went_away(motet: Any, motet_server: Any) -> None:
    # The prompt tries to reconnect, says it could not, and goes on
    # (tests/cli/test_client_interactive.py has the server coming back).
    server = motet_server()
    with interactive_client(motet, server.port) as (session, controller):
        screen = Reader(controller)
        screen.read_until(b"motet> ")
        assert server.terminate() == 0
        os.write(controller, b"ping\n")
        rest = ANSI.sub(b"", screen.read_until(b"motet> ", timeout=20)).decode()
        assert "the next request tries again" in rest
        os.write(controller, b"quit\n")
        rest += ANSI.sub(b"", screen.read_to_end()).decode()
        assert session.wait(10) == 0
        assert "Traceback" not in rest


def test_a_bad_request_line_number_counts_every_line(motet: Any, motet_server: Any) -> None:
    server = motet_server()
    script = "ping\n\n# comment\nread\nread User-u1 x\nsubscribe a b\nping extra\n"
    result = motet.run("client", "--port", str(server.port), input=script)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "motet: error: line 4: usage: read STREAM [FROM_VERSION] [LIMIT]",
        "motet: error: line 5: FROM_VERSION must be a whole number, got 'x'",
        "motet: error: line 6: usage: subscribe [FROM_POSITION]",
        "motet: error: line 7: ping takes no arguments",
    ]
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(reply["id"], reply["ok"]) for reply in replies] == [
        (1, True),
        (4, False),
        (5, False),
        (6, False),
        (7, False),
    ]
    assert {reply["error"]["code"] for reply in replies[1:]} == {"bad_request"}
