"""A small HTTP/1.1 client over real trio sockets (h11), for the HTTP tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import trio


class Answer:
    """One HTTP response: status, headers (lower-case names), body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:200]!r}>"

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


class Connection:
    """One keep-alive connection: requests one after another."""

    def __init__(self, stream: trio.abc.Stream, token: str | None) -> None:
        self.stream = stream
        self.token = token
        self.conn = h11.Connection(h11.CLIENT)

    async def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(bytes(await self.stream.receive_some(65536)))

    def _head(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        fields = [("host", "127.0.0.1"), *headers.items()]
        if self.token is not None and "authorization" not in {k.lower() for k in headers}:
            fields.append(("authorization", f"Bearer {self.token}"))
        if body is not None:
            fields.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=fields))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        return data

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        await self.stream.send_all(self._head(method, path, body, headers or {}))
        response = await self._next()
        while isinstance(response, h11.InformationalResponse):
            response = await self._next()
        assert isinstance(response, h11.Response), response
        chunks = []
        while True:
            event = await self._next()
            if isinstance(event, h11.EndOfMessage):
                break
            chunks.append(bytes(event.data))
        fields = {k.decode().lower(): v.decode() for k, v in response.headers}
        return Answer(response.status_code, fields, b"".join(chunks))

    async def events(
        self, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[dict[str, str]]:
        """Send a GET and yield the Server-Sent Events of its answer, each as
        ``{"id", "event", "data"}`` (comments are skipped)."""
        await self.stream.send_all(self._head("GET", path, None, headers or {}))
        response = await self._next()
        assert isinstance(response, h11.Response), response
        assert response.status_code == 200, response
        buffer = b""
        while True:
            event = await self._next()
            if not isinstance(event, h11.Data):
                return
            buffer += bytes(event.data)
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                fields: dict[str, str] = {}
                for line in block.decode().split("\n"):
                    if not line or line.startswith(":"):
                        continue
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                if "data" in fields:
                    yield fields


class Http:
    """Opens connections to one server; ``await http.get(...)`` etc. use a fresh one."""

    def __init__(self, port: int, token: str | None = None, ssl_context: Any = None) -> None:
        self.port = port
        self.token = token
        self.ssl_context = ssl_context

    @asynccontextmanager
    async def connect(self, token: Any = "default") -> AsyncIterator[Connection]:
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        if self.ssl_context is not None:
            stream = trio.SSLStream(stream, self.ssl_context, server_hostname="127.0.0.1")
        async with stream:
            yield Connection(stream, self.token if token == "default" else token)

    async def request(self, method: str, path: str, body: Any = None, **options: Any) -> Answer:
        token = options.pop("token", "default")
        async with self.connect(token) as connection:
            return await connection.request(method, path, body, **options)

    async def get(self, path: str, **options: Any) -> Answer:
        return await self.request("GET", path, **options)

    async def post(self, path: str, body: Any = None, **options: Any) -> Answer:
        return await self.request("POST", path, {} if body is None else body, **options)


def user(user_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "name": f"Name {user_id}",
        "email": f"{user_id}@example.org",
        "password": "secret",
        **fields,
    }
