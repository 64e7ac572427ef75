"""The pooled HTTP recipe against the suite's real aiohttp server."""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import time
from typing import Any, TypedDict

import aiohttp
import pytest
import uvloop
from act_operator_lib.cookbook.http_client import (
    FetchJSON,
    FetchSettings,
    HttpClient,
    HTTPConnectionError,
    HTTPContentError,
    HttpError,
    HttpSettings,
    HTTPStatusError,
    HTTPTimeoutError,
    is_retryable,
    safe_url,
)
from act_operator_lib.cookbook.resources import Resources
from act_operator_lib.cookbook.retry import retry_call
from langgraph.graph import StateGraph
from langgraph.types import RetryPolicy

from act_operator_lib import metrics
from tests.helpers import run_example
from tests.http_server import HttpTestServer


class State(TypedDict, total=False):
    url: str
    response: Any


def fetch_graph(client: HttpClient, retry: RetryPolicy | None = None) -> Any:
    builder = StateGraph(State)
    builder.add_node(FetchJSON(client), retry_policy=retry)
    builder.add_edge("__start__", "FetchJSON")
    return builder.compile()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sessions_on_this_loop() -> list[aiohttp.ClientSession]:
    loop = asyncio.get_running_loop()
    return [shared.session for lp, _, shared in HttpClient.sessions.items() if lp is loop]


async def test_graph_runs_share_one_session(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    graph = fetch_graph(client)
    results = [await graph.ainvoke({"url": "/json"}) for _ in range(3)]
    assert all(r["response"]["ok"] for r in results)
    assert len(sessions_on_this_loop()) == 1
    session = client.session()
    await graph.ainvoke({"url": "/json"})
    assert client.session() is session
    assert http_server.hits["/json"] == 4
    await client.aclose()
    assert session.closed
    assert sessions_on_this_loop() == []


async def test_concurrent_first_calls_create_one_session(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(timeout=7.0))
    replies = await asyncio.gather(*(client.get_json(http_server.url + "/json") for _ in range(30)))
    assert len(replies) == 30
    assert len([s for s in sessions_on_this_loop() if not s.closed]) == 1
    # Equal settings share the session; different settings get their own.
    assert HttpClient(HttpSettings(timeout=7.0)).session() is client.session()
    assert HttpClient(HttpSettings(timeout=8.0)).session() is not client.session()
    await HttpClient(HttpSettings(timeout=8.0)).aclose()
    await client.aclose()


def test_several_asyncio_runs_and_uvloop(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    graph = fetch_graph(client)
    seen: list[aiohttp.ClientSession] = []

    async def one_run() -> Any:
        result = await graph.ainvoke({"url": "/json"})
        seen.append(client.session())
        return result["response"]

    for _ in range(2):
        assert asyncio.run(one_run())["ok"] is True
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(one_run())["ok"] is True
        assert "uvloop" in type(runner.get_loop()).__module__
    assert len({id(s) for s in seen}) == 3  # a new session on each loop
    assert all(s.closed for s in seen)  # each closed when its loop shut down
    assert not [
        s for _, _, shared in HttpClient.sessions.items() for s in seen if shared.session is s
    ]


@metrics.collecting()
def test_a_loop_closed_without_shutdown_leaves_nothing_behind(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url, limit=9), name="forgotten")

    async def use_then_close_by_hand() -> int:
        await client.get_json("/json")
        session = client.session()
        await session.close()  # closed, but not through HttpClient
        return id(session)

    loop = asyncio.new_event_loop()
    session_id = loop.run_until_complete(use_then_close_by_hand())
    loop.close()  # no shutdown_asyncgens: the loop-shutdown close never ran
    assert metrics.snapshot().value("pool_size", name="forgotten") == 9
    assert asyncio.run(client.get_json("/json"))["ok"] is True
    # The next session creation forgot the dead loop's session: both counted down.
    assert metrics.snapshot().value("pool_size", name="forgotten") == 0
    assert not [lp for lp, _, shared in HttpClient.sessions.items() if lp is loop]
    assert session_id not in {id(shared.session) for _, _, shared in HttpClient.sessions.items()}


async def test_text_bytes_and_echo(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    assert await client.text("GET", "/text") == "hello from the test server"
    assert await client.bytes("GET", "/bytes") == bytes(range(256))
    echoed = await client.json("POST", "/echo", json={"a": 1})
    assert echoed == {
        "method": "POST",
        "body": '{"a": 1}',
        "query": {},
        "content_type": "application/json",
    }
    await client.aclose()


async def test_slow_response_times_out_with_the_url(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    started = time.monotonic()
    with pytest.raises(HTTPTimeoutError, match=r"GET .*/slow\?delay=2 timed out after 0.2s"):
        await client.get_json("/slow", params={"delay": 2}, request_timeout=0.2)
    assert time.monotonic() - started < 1.5
    await client.aclose()


async def test_a_redirect_hop_keeps_the_calls_own_timeout(http_server: HttpTestServer) -> None:
    # The session's default is 30 s: only the call's 0.2 s, passed on to the hop, ends it.
    client = HttpClient(HttpSettings(base_url=http_server.url))
    with pytest.raises(HTTPTimeoutError, match=r"timed out after 0.2s"):
        await client.get_json("/redirect", params={"to": "/slow?delay=2"}, request_timeout=0.2)
    await client.aclose()


async def test_500_raises_typed_error_without_credentials(http_server: HttpTestServer) -> None:
    client = HttpClient()
    secret_url = http_server.url.replace("http://", "http://alice:s3cr3t@") + "/status/500"
    with pytest.raises(HTTPStatusError) as caught:
        await client.get_json(secret_url, params={"api_key": "k-123", "page": "2"})
    error = caught.value
    assert (error.status, error.method) == (500, "GET")
    assert error.snippet == "status 500 from the test server"
    for text in (str(error), repr(error), error.url):
        assert "s3cr3t" not in text
        assert "alice" not in text
        assert "k-123" not in text
    assert "page=2" in error.url
    assert http_server.hits["/status/500"] == 1  # 500 is not retried by the client
    assert is_retryable(error)
    await client.aclose()


async def test_429_retry_after_is_honoured_for_idempotent_requests(
    http_server: HttpTestServer,
) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    started = time.monotonic()
    reply = await client.get_json("/retry-after", params={"fails": 2, "after": "0.1", "key": "get"})
    assert reply == {"ok": True, "calls": 3}
    assert time.monotonic() - started >= 0.2

    # POST is not idempotent: one try, the error carries the server's delay.
    with pytest.raises(HTTPStatusError) as caught:
        await client.json(
            "POST", "/retry-after", params={"fails": 1, "after": "0.1", "key": "post"}
        )
    assert (caught.value.status, caught.value.retry_after) == (429, 0.1)
    # ...unless the caller says retrying it is safe.
    reply = await client.json("POST", "/retry-after", params={"fails": 1, "key": "p2"}, retry=True)
    assert reply["calls"] == 2

    # 503 too; a Retry-After longer than max_retry_after fails at once.
    reply = await client.get_json("/retry-after", params={"fails": 1, "status": 503, "key": "s"})
    assert reply["calls"] == 2
    patient = HttpClient(HttpSettings(base_url=http_server.url, max_retry_after=1.0))
    with pytest.raises(HTTPStatusError, match="429"):
        await patient.get_json("/retry-after", params={"fails": 1, "after": "60", "key": "long"})
    await client.aclose()


async def test_reset_mid_body_is_retried_by_langgraph_retry_policy(
    http_server: HttpTestServer,
) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    graph = fetch_graph(
        client, RetryPolicy(max_attempts=3, initial_interval=0.01, retry_on=is_retryable)
    )
    # A connection error of the client's own (a ConnectionError), the aiohttp cause chained.
    with pytest.raises(HTTPConnectionError) as caught:
        await graph.ainvoke({"url": "/reset"})
    assert isinstance(caught.value.__cause__, aiohttp.ClientPayloadError)
    assert http_server.hits["/reset"] == 3
    assert (await graph.ainvoke({"url": "/json"}))["response"]["ok"]  # the pool still works
    await client.aclose()


async def test_one_call_retried_inside_a_node_with_retry_call(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    policy = RetryPolicy(max_attempts=4, initial_interval=0.01, jitter=False, retry_on=is_retryable)
    params = {"fails": 2, "status": 500, "key": "retry-call"}
    value, attempts = await retry_call(
        lambda: client.get_json("/retry-after", params=params), policy
    )
    assert value == {"ok": True, "calls": 3}
    assert [type(a.error).__name__ for a in attempts] == [
        "HTTPStatusError",
        "HTTPStatusError",
        "NoneType",
    ]
    # A 404 is not retryable: one call, raised at once.
    with pytest.raises(HTTPStatusError, match="404"):
        await retry_call(lambda: client.get_json("/nope"), policy)
    assert http_server.hits["/nope"] == 1
    await client.aclose()


async def test_malformed_json_and_large_body(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url, max_body=1024 * 1024))
    with pytest.raises(HTTPContentError, match=r"GET .*/malformed: invalid JSON"):
        await client.get_json("/malformed")
    with pytest.raises(HTTPContentError, match="exceeds max_body=1048576"):
        await client.bytes("GET", "/large", params={"size": 50 * 1024 * 1024})
    assert len(await client.bytes("GET", "/large", params={"size": 1000})) == 1000
    await client.aclose()


async def test_text_of_streamed_and_undecodable_bodies(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    # Chunked, no charset declared: decoded as UTF-8.
    assert await client.text("GET", "/chunked", params={"n": 2}) == "chunk 0\nchunk 1\n"
    # Bytes that are not UTF-8 are an unusable body, not a UnicodeDecodeError.
    for read in ("text", "json"):
        with pytest.raises(HTTPContentError, match=r"GET .*/bytes: body is not utf-8 text"):
            await client.request("GET", "/bytes", read=read)
    await client.aclose()


async def test_retry_after_as_an_http_date(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    started = time.monotonic()
    # Whole seconds only: a date 2 s ahead means a wait of more than 1 s.
    after = email.utils.formatdate(time.time() + 2, usegmt=True)
    reply = await client.get_json("/retry-after", params={"fails": 1, "after": after, "key": "d"})
    assert reply == {"ok": True, "calls": 2}
    assert 1.0 <= time.monotonic() - started < 5
    await client.aclose()


async def test_a_close_while_waiting_out_retry_after_does_not_break_the_retry(
    http_server: HttpTestServer,
) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    params = {"fails": 1, "after": "0.3", "key": "closed-mid-wait"}
    call = asyncio.create_task(client.get_json("/retry-after", params=params))
    await asyncio.sleep(0.15)  # the first answer was a 429: the call is waiting
    await client.aclose()
    assert await call == {"ok": True, "calls": 2}
    await client.aclose()


async def test_cancelled_mid_flight_leaks_nothing(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url, limit=2))
    graph = fetch_graph(client)
    await graph.ainvoke({"url": "/json"})
    before = len(asyncio.all_tasks())
    runs = [asyncio.create_task(graph.ainvoke({"url": "/slow?delay=5"})) for _ in range(2)]
    await asyncio.sleep(0.2)
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before
    # Both connection slots (limit=2) came back: two more requests go through at once.
    replies = await asyncio.wait_for(
        asyncio.gather(client.get_json("/json"), client.get_json("/json")), 2
    )
    assert all(r["ok"] for r in replies)
    await client.aclose()


async def test_metrics_count_requests_retries_and_pool_size(http_server: HttpTestServer) -> None:
    with metrics.collecting():
        client = HttpClient(HttpSettings(base_url=http_server.url, limit=7), name="metered")
        await client.get_json("/json")
        await client.get_json("/retry-after", params={"fails": 1, "key": "metered"})
        during = metrics.snapshot()
        await client.aclose()
        after = metrics.snapshot()
    assert during.value("http_requests", name="metered") == 3  # 1 + (429, then 200)
    assert during.value("http_retries", name="metered") == 1
    assert during.value("pool_size", name="metered") == 7  # a gauge: the open session's limit
    assert after.value("pool_size", name="metered") == 0


async def test_resources_close_the_session(http_server: HttpTestServer) -> None:
    async with Resources() as resources:
        client = HttpClient(HttpSettings(base_url=http_server.url), resources=resources)
        graph = fetch_graph(client)
        assert (await resources.run(graph, {"url": "/json"}))["response"]["ok"]
        session = client.session()
    assert session.closed


async def test_fetch_settings_choose_keys(http_server: HttpTestServer) -> None:
    class Other(TypedDict, total=False):
        link: str
        body: Any

    client = HttpClient(HttpSettings(base_url=http_server.url))
    builder = StateGraph(Other)
    builder.add_node(
        FetchJSON(client, FetchSettings(url_key="link", output_key="body", params=(("q", "x"),)))
    )
    builder.add_edge("__start__", "FetchJSON")
    result = await builder.compile().ainvoke({"link": "/json"})
    assert result["body"]["query"] == {"q": "x"}
    await client.aclose()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "HttpSettings timeout must be a finite number of seconds > 0, got 0"),
        ({"limit": -1}, r"HttpSettings limit must be an int >= 0 \(0: no limit\), got -1"),
        (
            {"max_attempts": 0},
            r"HttpSettings max_attempts must be an int >= 1 \(1: never retry\), got 0",
        ),
        (
            {"connect_timeout": -2},
            "connect_timeout must be a finite number of seconds > 0 or None, got -2",
        ),
        ({"base_url": "/relative"}, "base_url must be an absolute http or https URL"),
    ],
)
def test_invalid_settings_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HttpSettings(**kwargs)


def test_invalid_arguments() -> None:
    with pytest.raises(TypeError, match="HttpClient settings must be HttpSettings, got dict"):
        HttpClient({"timeout": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FetchJSON client must be an HttpClient"):
        FetchJSON("http://x")  # type: ignore[arg-type]
    assert HttpSettings(headers={"b": "2", "a": "1"}).headers == (("a", "1"), ("b", "2"))
    assert hash(HttpSettings(headers={"a": "1"})) == hash(HttpSettings(headers={"a": "1"}))
    assert safe_url("http://u:p@h/x?token=abc&n=1") == "http://h/x?token=***&n=1"


def test_example_runs() -> None:
    out = run_example("http_client")
    assert "response: {'hello': 'world', 'path': '/hello'}" in out
    assert "returned 404" in out


# --- issue 11, points 13-16 ---


async def test_closing_one_client_does_not_break_another_sharing_the_session(
    http_server: HttpTestServer,
) -> None:
    settings = HttpSettings(base_url=http_server.url)
    first, second = HttpClient(settings), HttpClient(settings)
    await first.get_json("/json")
    assert second.session() is first.session()  # equal settings: one shared session
    in_flight = asyncio.create_task(second.get_json("/slow", params={"delay": 0.3}))
    await asyncio.sleep(0.1)
    await first.aclose()  # first is done with it; second is still using it
    assert (await in_flight)["ok"] is True
    assert not second.session().closed
    assert (await first.get_json("/json"))["ok"]  # a closed client may be used again
    await first.aclose()
    session = second.session()
    await second.aclose()  # the last user: now the session closes
    assert session.closed
    assert sessions_on_this_loop() == []


def test_settings_repr_redacts_secret_headers() -> None:
    settings = HttpSettings(
        base_url="http://alice:pw@h/api",
        headers={
            "Authorization": "Bearer sk-live-123",
            "Cookie": "session=c00kie",
            "X-API-Key": "k-456",
            "Proxy-Authorization": "Basic cHJveHk=",
            "Accept": "application/json",
        },
    )
    text = repr(settings)
    for secret in ("sk-live-123", "c00kie", "k-456", "cHJveHk=", "pw", "alice"):
        assert secret not in text
    assert "'Authorization', '***'" in text
    assert "'Accept', 'application/json'" in text  # not a secret: shown
    assert "timeout=30.0" in text


async def test_base_url_with_a_path_is_a_prefix(http_server: HttpTestServer) -> None:
    # "/json" and "json" both go under the prefix, with or without a trailing slash.
    for base in (http_server.url + "/status", http_server.url + "/status/"):
        client = HttpClient(HttpSettings(base_url=base))
        for path in ("/404", "404"):
            with pytest.raises(HTTPStatusError) as caught:
                await client.get_json(path)
            assert caught.value.status == 404
            assert caught.value.url == http_server.url + "/status/404"
            assert "status 404 from the test server" in caught.value.snippet
        await client.aclose()
    assert http_server.hits["/status/404"] == 4
    assert http_server.hits["/404"] == 0
    root = HttpClient(HttpSettings(base_url=http_server.url))
    assert (await root.get_json("json"))["path"] == "/json"
    assert (await root.get_json("/json?x=1"))["query"] == {"x": "1"}
    await root.aclose()


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("http://h/api?x=1", "HttpSettings base_url must have no query or fragment"),
        ("ftp://h/", "HttpSettings base_url must be an absolute http or https URL"),
        ("/api", "HttpSettings base_url must be an absolute http or https URL"),
    ],
)
def test_ambiguous_base_urls_are_refused(base_url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        HttpSettings(base_url=base_url)


async def test_every_failure_is_an_http_error(http_server: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    refused = HttpClient(HttpSettings(base_url=f"http://127.0.0.1:{unused_port()}"))
    failures: list[tuple[Any, type[BaseException]]] = [
        (client.get_json("/reset"), HTTPConnectionError),  # a reset mid-body
        (refused.get_json("/json"), HTTPConnectionError),  # nothing listening
        (client.get_json("/status/500"), HTTPStatusError),
        (client.get_json("/malformed"), HTTPContentError),
        (client.get_json("/slow", params={"delay": 2}, request_timeout=0.1), HTTPTimeoutError),
    ]
    for call, kind in failures:
        with pytest.raises(HttpError) as caught:
            await call
        assert isinstance(caught.value, kind), caught.value
        assert http_server.url.split(":")[1] in str(caught.value)  # names the URL
    reset = HTTPConnectionError("GET", "http://h/x", "reset")
    assert isinstance(reset, ConnectionError)  # LangGraph's default RetryPolicy retries it
    assert is_retryable(reset)
    await client.aclose()
    await refused.aclose()
