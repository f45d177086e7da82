"""The gateway's HTTP/1.1 client against scripted servers on 127.0.0.1.

Each server answers every request it reads with what the test's `answer`
function returns: bytes to send, or a callable that gets the stream writer.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.upstream import BadResponse, ConnectError, Disconnected, Pool


class ScriptedServer:
    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0

    async def __aenter__(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(request)
                reply = self.answer(request)
                if callable(reply):
                    if await reply(writer) == "close":
                        return
                else:
                    writer.write(reply)
                    await writer.drain()
        finally:
            writer.close()


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


async def call(pool: Pool, key, method="GET", target="/x", headers=(), body=b"", timeout=5.0):
    answer = await pool.request(key, method, target, list(headers), body, timeout)
    return answer, await answer.read()


# --- requests ----------------------------------------------------------------------


def test_request_is_sent_as_given_in_one_piece():
    async def scenario():
        server = ScriptedServer(lambda request: ok())
        async with server as key:
            pool = Pool()
            await call(
                pool,
                key,
                "POST",
                "/echo%2Fx?a=1&b=x%20y&flag",
                [("X-Custom", "kept"), ("Content-Type", "application/json")],
                b'{"a": 1}',
            )
            await call(pool, key, "GET", "/health")
            pool.close()
        return key, server.requests

    key, requests = run(scenario())
    host = b"Host: 127.0.0.1:" + str(key[1]).encode()
    assert requests[0] == (
        b"POST /echo%2Fx?a=1&b=x%20y&flag HTTP/1.1\r\n" + host + b"\r\nX-Custom: kept\r\n"
        b'Content-Type: application/json\r\nContent-Length: 8\r\n\r\n{"a": 1}'
    )
    # No body, and a method that needs none: no Content-Length either.
    assert requests[1] == b"GET /health HTTP/1.1\r\n" + host + b"\r\n\r\n"


def test_empty_post_says_its_length_is_zero():
    async def scenario():
        server = ScriptedServer(lambda request: ok())
        async with server as key:
            pool = Pool()
            await call(pool, key, "POST", "/predict")
            pool.close()
        return server.requests

    assert b"Content-Length: 0\r\n" in run(scenario())[0]


# --- answers -----------------------------------------------------------------------------


def test_content_length_answer_and_keep_alive():
    async def scenario():
        server = ScriptedServer(
            lambda request: ok(b"x" * 10, b"X-Model-Version: 1.0.0\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n")
        )
        async with server as key:
            pool = Pool()
            answers = [await call(pool, key) for _ in range(3)]
            pool.close()
        return answers, server.connections

    answers, connections = run(scenario())
    for answer, body in answers:
        assert (answer.status, answer.reason, body) == (200, "OK", b"x" * 10)
        assert answer.content_length == 10
        assert answer.headers == [
            ("Content-Type", "text/plain"), ("X-Model-Version", "1.0.0"), ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"), ("Content-Length", "10"),
        ]  # fmt: skip
    assert connections == 1


def test_non_ascii_header_values_are_read_as_utf_8():
    reply = ok(b"x", 'Content-Disposition: attachment; filename="résumé.txt"\r\n'.encode())

    async def scenario():
        async with ScriptedServer(lambda request: reply) as key:
            pool = Pool()
            answer, _ = await call(pool, key)
            pool.close()
        return dict(answer.headers)

    assert run(scenario())["Content-Disposition"] == 'attachment; filename="résumé.txt"'


def test_chunked_answer_with_extensions_and_trailers():
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    )

    async def scenario():
        server = ScriptedServer(lambda request: chunked)
        async with server as key:
            pool = Pool()
            first = await call(pool, key)
            second = await call(pool, key)
            pool.close()
        return first, second, server.connections

    (answer, body), (_, again), connections = run(scenario())
    assert answer.content_length is None
    assert body == again == b"hello 0123456789"
    assert connections == 1


def test_chunked_answer_streams_chunk_by_chunk():
    async def slow_chunks(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"one", b"two", b"three"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def scenario():
        async with ScriptedServer(lambda request: slow_chunks) as key:
            pool = Pool()
            answer = await pool.request(key, "GET", "/stream", [], b"", 5)
            chunks = [chunk async for chunk in answer.iter_chunks()]
            pool.close()
        return chunks

    assert run(scenario()) == [b"one", b"two", b"three"]


def test_answer_without_length_is_read_until_the_connection_closes():
    async def until_close(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        return "close"

    async def scenario():
        server = ScriptedServer(lambda request: until_close)
        async with server as key:
            pool = Pool()
            first = await call(pool, key)
            second = await call(pool, key)
            pool.close()
        return first, second, server.connections

    (answer, body), (_, again), connections = run(scenario())
    assert body == again == b"all of it"
    assert connections == 2


@pytest.mark.parametrize(
    ("method", "reply"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
)
def test_answers_without_a_body(method, reply):
    async def scenario():
        server = ScriptedServer(lambda request: reply)
        async with server as key:
            pool = Pool()
            first = await call(pool, key, method)
            second = await call(pool, key, method)
            pool.close()
        return first, second, server.connections

    (_, body), (_, again), connections = run(scenario())
    assert body == again == b""
    assert connections == 1


def test_interim_answers_are_skipped():
    reply = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + ok(b"final")

    async def scenario():
        async with ScriptedServer(lambda request: reply) as key:
            pool = Pool()
            result = await call(pool, key)
            pool.close()
        return result

    answer, body = run(scenario())
    assert (answer.status, body) == (200, b"final")


@pytest.mark.parametrize(
    "reply",
    [
        ok(b"bye", b"Connection: close\r\n"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye",
    ],
)
def test_connection_is_not_reused_when_the_answer_says_so(reply):
    async def scenario():
        server = ScriptedServer(lambda request: reply)
        async with server as key:
            pool = Pool()
            await call(pool, key)
            await call(pool, key)
            pool.close()
        return server.connections

    assert run(scenario()) == 2


def test_http_1_0_keep_alive_is_reused():
    reply = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"

    async def scenario():
        server = ScriptedServer(lambda request: reply)
        async with server as key:
            pool = Pool()
            await call(pool, key)
            await call(pool, key)
            pool.close()
        return server.connections

    assert run(scenario()) == 1


def test_large_body_streams_intact():
    size = 5_000_000
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)

    async def scenario():
        async with ScriptedServer(lambda request: ok(payload)) as key:
            pool = Pool()
            answer = await pool.request(key, "GET", "/large", [], b"", 10)
            chunks = []
            async for chunk in answer.iter_chunks():
                chunks.append(chunk)
                await asyncio.sleep(0)  # a slow reader: the client pauses reading meanwhile
            pool.close()
        return chunks

    chunks = run(scenario())
    assert b"".join(chunks) == payload
    assert len(chunks) > 1


def test_a_body_left_unread_closes_the_connection():
    async def scenario():
        server = ScriptedServer(lambda request: ok(b"x" * 100_000))
        async with server as key:
            pool = Pool()
            answer = await pool.request(key, "GET", "/x", [], b"", 5)
            answer.release()
            await call(pool, key)
            pool.close()
        return server.connections

    assert run(scenario()) == 2


# --- failures ------------------------------------------------------------------------------


def test_pooled_connection_closed_by_the_instance_is_retried_on_a_new_one():
    async def answer_then_close(writer):
        writer.write(ok(b"once"))
        await writer.drain()
        return "close"

    async def scenario():
        server = ScriptedServer(lambda request: answer_then_close)
        async with server as key:
            pool = Pool()
            first = await call(pool, key)
            # The instance's FIN may or may not have arrived yet; either way
            # the second call must succeed on a fresh connection.
            second = await call(pool, key)
            pool.close()
        return first[1], second[1], server.connections

    assert run(scenario()) == (b"once", b"once", 2)


def test_refused_connection_is_a_connect_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario():
        pool = Pool()
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            await pool.request(("127.0.0.1", port), "GET", "/", [], b"", 5)

    run(scenario())


def test_instance_closing_without_an_answer_is_disconnected():
    async def close_at_once(writer):
        return "close"

    async def scenario():
        async with ScriptedServer(lambda request: close_at_once) as key:
            pool = Pool()
            with pytest.raises(Disconnected):
                await pool.request(key, "GET", "/", [], b"", 5)
            pool.close()

    run(scenario())


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    ],
)
def test_answers_that_are_not_http_are_bad_responses(reply):
    async def scenario():
        async with ScriptedServer(lambda request: reply) as key:
            pool = Pool()
            with pytest.raises(BadResponse):
                await call(pool, key)
            pool.close()

    run(scenario())


def test_bad_chunk_size_is_a_bad_response():
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"

    async def scenario():
        async with ScriptedServer(lambda request: reply) as key:
            pool = Pool()
            answer = await pool.request(key, "GET", "/", [], b"", 5)
            with pytest.raises(BadResponse):
                await answer.read()
            pool.close()

    run(scenario())


def test_silent_instance_times_out_and_its_connection_is_dropped():
    async def never(writer):
        await asyncio.sleep(3)

    async def scenario():
        loop = asyncio.get_running_loop()
        async with ScriptedServer(lambda request: never) as key:
            pool = Pool()
            started = loop.time()
            with pytest.raises(TimeoutError):
                await pool.request(key, "GET", "/sleep", [], b"", 0.3)
            elapsed = loop.time() - started
            assert not pool.idle.get(key)
            pool.close()
        return elapsed

    # The server never answers, so only the timeout can have ended the call;
    # how soon after 0.3 s it fired depends on the machine, not on the pool.
    assert run(scenario()) >= 0.25


def test_timeout_covers_a_body_that_stalls():
    async def stall(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(3)

    async def scenario():
        async with ScriptedServer(lambda request: stall) as key:
            pool = Pool()
            answer = await pool.request(key, "GET", "/", [], b"", 0.3)
            with pytest.raises(TimeoutError):
                await answer.read()
            pool.close()

    run(scenario())


def test_close_idle_drops_old_connections_only():
    async def scenario():
        async with ScriptedServer(lambda request: ok()) as key:
            pool = Pool()
            await call(pool, key)
            pool.close_idle(older_than=60)
            kept = len(pool.idle.get(key, []))
            pool.close_idle(older_than=0)
            return kept, len(pool.idle.get(key, []))

    assert run(scenario()) == (1, 0)
