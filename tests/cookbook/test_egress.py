"""Untrusted URLs from state reach only the hosts the application allowed (issue 21).

Two real servers: ``http_server`` on 127.0.0.1 (the allowed host) and ``http_server_b`` on
127.0.0.2 and the same port (the internal host no guarded request may reach), plus a stub
DNS resolver mapping test names to chosen addresses.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.egress import (
    EgressBlockedError,
    EgressPolicy,
    HttpError,
    blocked_network,
    normalise_host,
)
from act_operator_lib.cookbook.http_client import (
    FetchJSON,
    FetchSettings,
    HttpClient,
    HTTPRedirectError,
    HttpSettings,
    is_retryable,
)
from act_operator_lib.cookbook.http_stream import HttpStreamNode, HttpStreamPolicy
from act_operator_lib.cookbook.retry import retry_call
from aiohttp.abc import AbstractResolver, ResolveResult
from langgraph.graph import StateGraph
from langgraph.types import RetryPolicy

from tests.helpers import run_example
from tests.http_server import HttpTestServer


class State(TypedDict, total=False):
    url: str
    response: Any
    stream: Any


class StubResolver(AbstractResolver):
    """Answers from a table: each name's answers are given in turn, the last one repeated."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        answers = self.table.get(host)
        if not answers:
            raise OSError(f"stub resolver: no such name {host!r}")
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        return None


def resolver_for(table: dict[str, list[str]]) -> Callable[[], AbstractResolver]:
    stub = StubResolver(table)  # one instance: answers are consumed across sessions
    return lambda: stub


def fetch_graph(client: HttpClient) -> Any:
    builder = StateGraph(State)
    builder.add_node(FetchJSON(client))
    builder.add_edge("__start__", "FetchJSON")
    return builder.compile()


def stream_graph(client: HttpClient) -> Any:
    builder = StateGraph(State)
    builder.add_node(HttpStreamNode(client, HttpStreamPolicy(idle_timeout=5)))
    builder.add_edge("__start__", "HttpStreamNode")
    return builder.compile()


async def refused(graph: Any, url: str) -> EgressBlockedError:
    with pytest.raises(EgressBlockedError) as caught:
        await graph.ainvoke({"url": url})
    return caught.value


async def test_the_three_reproductions_are_refused_through_fetch_json(
    http_server: HttpTestServer, http_server_b: HttpTestServer
) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    graph = fetch_graph(client)
    # 1. An absolute URL from state does not replace base_url.
    error = await refused(graph, http_server_b.url + "/secret")
    assert "127.0.0.2" in error.rule
    assert "allow-list" in error.rule
    # 2. A redirect from the allowed host to the internal one is refused at the hop.
    error = await refused(graph, f"/redirect?to={http_server_b.url}/secret")
    assert error.url == http_server_b.url + "/secret"
    assert "internal" not in str(error)
    assert http_server.hits["/redirect"] == 1
    # 3. Cloud metadata.
    error = await refused(graph, "http://169.254.169.254/latest/meta-data/")
    assert "169.254.169.254" in str(error)
    assert http_server_b.hits == {}  # the internal server saw no request at all
    # The base origin itself still works, relative or absolute.
    assert (await graph.ainvoke({"url": "/json"}))["response"]["ok"]
    assert (await graph.ainvoke({"url": http_server.url + "/json"}))["response"]["ok"]
    await client.aclose()


async def test_the_three_reproductions_are_refused_through_http_stream_node(
    http_server: HttpTestServer, http_server_b: HttpTestServer
) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    graph = stream_graph(client)
    await refused(graph, http_server_b.url + "/sse")
    # aiohttp follows the stream's redirects; the guard's middleware checks each hop.
    error = await refused(graph, f"/redirect?to={http_server_b.url}/sse")
    assert error.url == http_server_b.url + "/sse"
    await refused(graph, "http://169.254.169.254/latest/meta-data/")
    assert http_server_b.hits == {}
    result = await graph.ainvoke({"url": "/sse?n=2"})
    assert result["stream"]["items"] == 2
    await client.aclose()


async def test_without_base_url_nodes_refuse_internal_addresses(
    http_server: HttpTestServer, http_server_b: HttpTestServer
) -> None:
    client = HttpClient()  # no base_url, no policy: nodes still guard (any public host)
    for graph in (fetch_graph(client), stream_graph(client)):
        error = await refused(graph, http_server_b.url + "/secret")
        assert "loopback" in error.rule
        error = await refused(graph, "http://169.254.169.254/latest/meta-data/")
        assert "link-local (cloud metadata)" in error.rule
        error = await refused(graph, "http://[::ffff:169.254.169.254]/")
        assert "IPv4-mapped" in error.rule
    assert http_server_b.hits == {}
    # Application code calling the client directly is not guarded (it is trusted).
    assert (await client.get_json(http_server.url + "/json"))["ok"]
    await client.aclose()


@pytest.mark.parametrize(
    ("form", "allowed"),
    [
        ("http://2130706433:{port}/json", True),  # decimal
        ("http://0x7f.1:{port}/json", True),  # hex, short
        ("http://017700000001:{port}/json", True),  # octal
        ("http://127.1:{port}/json", True),  # short
        ("http://%31%32%37.0.0.1:{port}/json", True),  # percent-encoded
        ("http://127.0.0.1.:{port}/json", True),  # trailing dot
        ("http://2130706434:{port}/secret", False),
        ("http://0x7f.0.0.2:{port}/secret", False),
        ("http://017700000002:{port}/secret", False),
        ("http://127.2:{port}/secret", False),
        ("http://%31%32%37.0.0.2:{port}/secret", False),
        ("http://127.0.0.1@127.0.0.2:{port}/secret", False),  # userinfo trick
        ("http://[::ffff:127.0.0.2]:{port}/secret", False),  # bracketed, IPv4-mapped
        ("http://[::ffff:127.0.0.1]:{port}/secret", False),  # mapped is not the literal
        ("ftp://127.0.0.1:{port}/json", False),
    ],
)
@pytest.mark.parametrize("node", ["FetchJSON", "HttpStreamNode"])
async def test_address_forms_are_normalised_before_checking(
    http_server: HttpTestServer,
    http_server_b: HttpTestServer,
    form: str,
    allowed: bool,
    node: str,
) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    url = form.format(port=http_server.port)
    if node == "FetchJSON":
        graph, path = fetch_graph(client), "/json"
    else:
        graph, path = stream_graph(client), "/sse"
        url = url.replace("/json", "/sse")
    if allowed:
        result = await graph.ainvoke({"url": url})
        assert result["response"]["ok"] if node == "FetchJSON" else result["stream"]["items"] == 5
        assert http_server.hits[path] == 1
    else:
        error = await refused(graph, url)
        assert "127.0.0.1@" not in error.url  # no credentials in the error
    assert http_server_b.hits == {}
    await client.aclose()


async def test_names_idna_wildcards_and_rebinding_through_the_resolver(
    http_server: HttpTestServer, http_server_b: HttpTestServer
) -> None:
    table = {
        "xn--bcher-kva.test": ["127.0.0.1"],
        "api.good.test": ["127.0.0.1"],
        "evil.good.test": ["127.0.0.2"],
        # First answer allowed, then the internal address: DNS rebinding.
        "rebind.good.test": ["127.0.0.1", "127.0.0.2"],
    }
    policy = EgressPolicy(allow=("bücher.test", "*.good.test"), allow_networks=("127.0.0.1/32",))
    client = HttpClient(HttpSettings(egress=policy, resolver=resolver_for(table)))
    graph = fetch_graph(client)
    port = http_server.port
    for url in (
        f"http://bücher.test:{port}/json",
        f"http://BÜCHER.test.:{port}/json",
        f"http://xn--bcher-kva.test:{port}/json",
        f"http://api.good.test:{port}/json",
    ):
        assert (await graph.ainvoke({"url": url}))["response"]["ok"], url
    error = await refused(graph, f"http://evil.good.test:{port}/secret")
    assert "evil.good.test resolved to 127.0.0.2" in error.rule
    assert error.url == f"http://evil.good.test:{port}/secret"
    error = await refused(graph, f"http://good.test:{port}/json")  # *.d is subdomains only
    assert "allow-list" in error.rule
    # Rebinding: the addresses checked are the addresses connected to, lookup by lookup.
    assert (await graph.ainvoke({"url": f"http://rebind.good.test:{port}/json"}))["response"]
    await client.aclose()  # a new connector: no cached answer, no kept-alive connection
    error = await refused(graph, f"http://rebind.good.test:{port}/secret")
    assert "resolved to 127.0.0.2" in error.rule
    # The stream node, on the same client: its lookup is checked the same way.
    table["rebind2.good.test"] = ["127.0.0.1", "127.0.0.2"]
    stream = stream_graph(client)
    assert (await stream.ainvoke({"url": f"http://rebind2.good.test:{port}/sse?n=1"}))["stream"]
    await client.aclose()
    error = await refused(stream, f"http://rebind2.good.test:{port}/sse")
    assert "rebind2.good.test resolved to 127.0.0.2" in error.rule
    assert http_server_b.hits == {}
    await client.aclose()


async def test_redirect_chains(http_server: HttpTestServer, http_server_b: HttpTestServer) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url, max_redirects=3))
    graph = fetch_graph(client)
    # allowed -> allowed -> allowed passes.
    hop2 = "/redirect?to=/json%3Fvia%3Dhops&status=307"
    result = await graph.ainvoke({"url": f"/redirect?to={hop2.replace('&', '%26')}"})
    assert result["response"]["query"] == {"via": "hops"}
    # allowed -> allowed -> blocked is refused at the blocked hop.
    hop2 = f"/redirect?to={http_server_b.url}/secret"
    error = await refused(graph, f"/redirect?to={hop2.replace('?', '%3F')}")
    assert error.url == http_server_b.url + "/secret"
    # More hops than max_redirects: a typed error, not retried.
    loop = "/redirect?to=/redirect%3Fto%3D/redirect%253Fto%253D/redirect%25253Fto%25253D/json"
    with pytest.raises(HTTPRedirectError, match="more than max_redirects=3"):
        await graph.ainvoke({"url": loop})
    assert http_server_b.hits == {}
    await client.aclose()


async def test_credentials_never_follow_a_redirect_to_another_origin(
    http_server: HttpTestServer, http_server_b: HttpTestServer
) -> None:
    secrets = {"Authorization": "Bearer sk-123", "X-API-Key": "k-456"}
    policy = EgressPolicy(allow=(), allow_internal=(http_server.url, http_server_b.url))
    client = HttpClient(HttpSettings(base_url=http_server.url, headers=secrets, egress=policy))
    graph = fetch_graph(client)
    # Same origin: the credentials are sent.
    same = (await graph.ainvoke({"url": "/redirect?to=/headers"}))["response"]
    assert same["Authorization"] == "Bearer sk-123"
    assert same["X-API-Key"] == "k-456"
    # Another origin: none of them, nor a per-call Cookie.
    other = await client.get_json(
        f"/redirect?to={http_server_b.url}/headers", headers={"Cookie": "session=c00kie"}
    )
    assert not {"Authorization", "X-API-Key", "Cookie"} & set(other)
    assert http_server_b.hits["/headers"] == 1
    # The stream node's redirects (aiohttp's own) drop them too.
    stream = stream_graph(client)
    await stream.ainvoke({"url": f"/redirect?to={http_server_b.url}/headers"}, stream_mode="custom")
    assert http_server_b.hits["/headers"] == 2
    await client.aclose()


async def test_egress_errors_are_http_errors_and_never_retried(
    http_server: HttpTestServer, http_server_b: HttpTestServer
) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url)).for_untrusted_urls()
    error = EgressBlockedError("http://u:p@h/", "rule")
    assert isinstance(error, HttpError)
    assert isinstance(error, ValueError)
    assert not isinstance(error, ConnectionError | OSError | TimeoutError)
    assert not is_retryable(error)
    assert "u:p" not in str(error)
    calls = 0

    async def fetch() -> Any:
        nonlocal calls
        calls += 1
        return await client.get_json(http_server_b.url + "/secret")

    for retry_on in (is_retryable, None):
        policy = RetryPolicy(max_attempts=3, initial_interval=0.01)
        if retry_on is not None:
            policy = policy._replace(retry_on=retry_on)
        calls = 0
        with pytest.raises(EgressBlockedError):
            await retry_call(fetch, policy)
        assert calls == 1
    assert http_server_b.hits == {}
    await client.aclose()


async def test_trusted_state_urls_opt_out(
    http_server: HttpTestServer, http_server_b: HttpTestServer
) -> None:
    client = HttpClient(HttpSettings(base_url=http_server.url))
    builder = StateGraph(State)
    builder.add_node(FetchJSON(client, FetchSettings(trust_state_urls=True)))
    builder.add_edge("__start__", "FetchJSON")
    result = await builder.compile().ainvoke({"url": http_server_b.url + "/secret"})
    assert result["response"] == {"secret": "internal"}  # what the guard exists to prevent
    await client.aclose()


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private network"),
        ("172.16.0.1", "private network"),
        ("192.168.1.1", "private network"),
        ("fd00::1", "private network"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT (100.64.0.0/10)"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified address"),
        ("::", "unspecified address"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "IPv4-mapped IPv6 (::ffff:0:0/96)"),
        ("64:ff9b::a9fe:a9fe", "NAT64 IPv6 (64:ff9b::/96)"),
        ("2002:7f00:1::", "6to4 IPv6 (2002::/16)"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_blocked_networks(address: str, network: str | None) -> None:
    import ipaddress

    assert blocked_network(ipaddress.ip_address(address)) == network


def test_host_normalisation_and_invalid_policies() -> None:
    assert normalise_host("0x7F.1") == "127.0.0.1"
    assert normalise_host("[::FFFF:7f00:1]") == "::ffff:7f00:1"
    assert normalise_host("Bücher.Test.") == "xn--bcher-kva.test"
    with pytest.raises(ValueError, match="out of range"):
        normalise_host("256.1.1.1")
    with pytest.raises(ValueError, match="EgressPolicy allow entries must be"):
        EgressPolicy(allow=("http://h/path",))
    with pytest.raises(ValueError, match="EgressPolicy allow entries must be"):
        EgressPolicy(allow=("ftp://h",))
    with pytest.raises(TypeError, match="EgressPolicy allow must be a tuple of str, got str"):
        EgressPolicy(allow="h")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allow_networks entries must be CIDR networks"):
        EgressPolicy(allow_networks=("nope",))
    with pytest.raises(ValueError, match="allow_internal must name hosts"):
        EgressPolicy(allow_internal=("*",))
    with pytest.raises(TypeError, match="HttpSettings egress must be an EgressPolicy"):
        HttpSettings(egress="on")  # type: ignore[arg-type]
    assert hash(EgressPolicy(allow=["a.test"])) == hash(EgressPolicy(allow=("a.test",)))


def test_example_runs() -> None:
    out = run_example("egress")
    assert "https://api.example.com/v1/items -> allowed" in out
    assert "http://2130706433/ -> refused" in out
