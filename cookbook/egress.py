"""Egress policy for the HTTP recipes: which hosts a URL taken from state may reach.

    policy = EgressPolicy(allow=("api.example.com", "*.cdn.example.com"))
    http = HttpClient(HttpSettings(egress=policy))          # every request and redirect hop checked
    policy.check_url("http://169.254.169.254/latest/")      # raises EgressBlockedError

In an agent, state is written by a language model and by users, so a URL in state is
untrusted input: pointed at ``http://169.254.169.254/`` (cloud metadata), a loopback admin
port or a private service, a fetch node becomes a server-side request forgery tool. A client
with a policy (``HttpSettings(egress=...)``) enforces it on every request, in three places:

- **Before the request**, on the URL: scheme ``http``/``https`` only, the host on the
  allow-list, and a host written as an address outside the blocked networks. Host forms are
  normalised first: decimal/octal/hex/short IPv4 (``2130706433``, ``0x7f.1``, ``127.1``),
  percent-encoded hosts, IDNA names, trailing dots, bracketed IPv6; the host is what follows
  the userinfo, so ``http://allowed.example@127.0.0.2/`` is a request to ``127.0.0.2``.
- **At connect time**, on the resolved addresses: the connector's resolver is wrapped
  (``GuardedResolver``), so the addresses checked are the addresses connected to, and a name
  answering a public address once and a private one later (DNS rebinding) is refused.
- **On every redirect hop** (``HttpClient``'s session middleware sees each hop before it connects),
  with a cap on hops in ``HttpClient``; credentials (``Authorization``, ``Cookie``,
  ``Proxy-Authorization``, API-key headers) are never sent to another origin, and a guarded
  session keeps no cookie jar (a cookie ignores ports, so a jar would share it across origins).

Blocked networks (stdlib ``ipaddress`` classifies): unspecified (``0.0.0.0``, ``::``),
loopback, private (RFC 1918, ULA), link-local (``169.254.0.0/16`` incl. the metadata address,
``fe80::/10``), CGNAT (``100.64.0.0/10``), multicast, reserved and documentation ranges, and
IPv4 embedded in IPv6 (``::ffff:0:0/96``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``).
``allow_networks`` takes ranges off that list; ``allow_internal`` names hosts (an internal
service by name, a development server) that may resolve anywhere.

A refusal raises ``EgressBlockedError`` before any connection is attempted, naming the URL
(without credentials) and the rule. It is a ``ValueError``: LangGraph's default
``RetryPolicy`` and the recipes' ``is_retryable`` never retry it.

Not covered: a permitted host that proxies requests onward (an open redirector is caught,
an HTTP proxy or a URL-fetching API on an allowed host is not); a proxy configured for the
session (the policy checks the target, not the proxy); TLS certificate checks (aiohttp's);
request bodies and response contents. Direct users of ``HttpClient.session()`` get the
connect-time and per-hop checks but not the URL rewriting to the canonical host.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from act_operator_lib.control import DoNotRetry

__all__ = [
    "EgressBlockedError",
    "EgressPolicy",
    "GuardedResolver",
    "HttpError",
    "blocked_network",
    "is_credential_header",
    "normalise_host",
    "safe_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SECRET_PARAM = re.compile(r"(token|key|secret|password|passwd|pwd|auth|sig|signature)", re.I)
_CREDENTIAL_HEADER = re.compile(
    r"^(authorization|proxy-authorization|cookie)$|auth|token|secret|api[-_]?key|password|session",
    re.I,
)
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_EMBEDDED_V4: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped IPv6 (::ffff:0:0/96)"),
    (ipaddress.IPv6Network("64:ff9b::/96"), "NAT64 IPv6 (64:ff9b::/96)"),
    (ipaddress.IPv6Network("64:ff9b:1::/48"), "NAT64 IPv6 (64:ff9b:1::/48)"),
    (ipaddress.IPv6Network("2002::/16"), "6to4 IPv6 (2002::/16)"),
)
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_CACHE_SIZE = 1024


class HttpError(Exception):
    """Base of every failure of the HTTP recipes: catch this to catch them all."""


class EgressBlockedError(DoNotRetry, HttpError, ValueError):
    """A request the egress policy refused, before any connection: ``url`` and ``rule``.

    Marked ``DoNotRetry``: the same URL is refused again, so the retry recipe never retries it.
    """

    def __init__(self, url: str | URL, rule: str) -> None:
        self.url = safe_url(url)
        self.rule = rule
        super().__init__(self.url, rule)

    def __str__(self) -> str:
        return f"egress to {self.url} blocked: {self.rule}"


def safe_url(url: str | URL) -> str:
    """``url`` without user/password and with secret-looking query values masked."""
    url = URL(url)
    if url.user is not None or url.password is not None:
        url = url.with_user(None)
    if url.query and any(_SECRET_PARAM.search(key) for key in url.query):
        url = url.with_query(
            [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in url.query.items()]
        )
    return str(url)


def is_credential_header(name: str) -> bool:
    """Whether a header carries a credential (Authorization, Cookie, API keys, tokens)."""
    return _CREDENTIAL_HEADER.search(name) is not None


def _loose_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read the way ``inet_aton`` reads it (``127.1``, ``0x7f.1``, ``2130706433``)."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        try:
            if part[:2] == "0x":
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part[0] == "0":
                numbers.append(int(part, 8))
            elif part.isdigit():
                numbers.append(int(part))
            else:
                return None
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        raise ValueError(f"numeric host {host!r} is out of range")
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def normalise_host(raw_host: str) -> str:
    """The canonical form of a URL's host: an address as ``ipaddress`` prints it, or a
    lower-case ASCII (IDNA) name without a trailing dot. Raises ``ValueError`` if invalid."""
    host = unquote(raw_host).strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        return str(ipaddress.IPv6Address(host))
    host = host.rstrip(".")
    address = _loose_ipv4(host)
    if address is not None:
        return str(address)
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{raw_host!r} is not a valid host")
    return host


def blocked_network(address: IPAddress) -> str | None:
    """The blocked network ``address`` belongs to, named, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        for network, name in _EMBEDDED_V4:
            if address in network:
                return name
        if address in _IPV4_COMPATIBLE and int(address) > 1:
            return "IPv4-compatible IPv6 (::/96)"
    if address.is_unspecified:
        return "unspecified address"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)" if str(address) == "169.254.169.254" else "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "CGNAT (100.64.0.0/10)"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private network"
    if not address.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True, slots=True)
class _Rules:
    """A compiled list of host entries."""

    any_host: bool
    hosts: frozenset[str]
    host_ports: frozenset[tuple[str, int]]
    origins: frozenset[tuple[str, str, int]]
    suffixes: tuple[str, ...]

    def match(self, scheme: str, host: str, port: int) -> bool:
        return (
            self.any_host
            or host in self.hosts
            or (host, port) in self.host_ports
            or (scheme, host, port) in self.origins
            or (bool(self.suffixes) and host.endswith(self.suffixes))
        )


def _compile(owner: str, name: str, entries: tuple[str, ...]) -> _Rules:
    hosts: set[str] = set()
    host_ports: set[tuple[str, int]] = set()
    origins: set[tuple[str, str, int]] = set()
    suffixes: list[str] = []
    any_host = False
    allowed = "'*', 'host', 'host:port', '*.domain' or 'http(s)://host[:port]'"
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"{owner} {name} entries must be {allowed}, got {entry!r}")
        if entry == "*":
            any_host = True
            continue
        if entry.startswith("*."):
            try:
                suffixes.append("." + normalise_host(entry[2:]))
            except ValueError:
                raise ValueError(
                    f"{owner} {name} entries must be {allowed}, got {entry!r}"
                ) from None
            continue
        try:
            url = URL(entry if "://" in entry else f"http://{entry}")
            valid = (
                url.scheme in _SCHEMES
                and url.raw_host is not None
                and url.user is None
                and url.path in ("", "/")
                and not url.query_string
                and not url.fragment
            )
            host = normalise_host(url.raw_host or "") if valid else ""
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"{owner} {name} entries must be {allowed}, got {entry!r}")
        port = url.port or _DEFAULT_PORTS[url.scheme]
        if "://" in entry:
            origins.add((url.scheme, host, port))
        elif url.explicit_port is not None:
            host_ports.add((host, port))
        else:
            hosts.add(host)
    return _Rules(
        any_host, frozenset(hosts), frozenset(host_ports), frozenset(origins), tuple(suffixes)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPolicy:
    """Where requests may go; hashable, so it can be part of ``HttpSettings``.

    EgressPolicy()                                          # any public host
    EgressPolicy(allow=("api.example.com", "*.example.org"))
    EgressPolicy(allow=(), allow_internal=("http://127.0.0.1:8080",))   # that origin only
    """

    allow: tuple[str, ...] = ("*",)
    """Hosts requests may reach: ``"*"`` (any), ``"host"``, ``"host:port"``, ``"*.domain"``
    (its subdomains, not the domain itself) or an origin ``"https://host[:port]"``. Their
    addresses must be outside the blocked networks."""
    allow_internal: tuple[str, ...] = ()
    """Further hosts, same forms, that may be anywhere, loopback and private networks
    included: internal services by name, a development server. Never ``"*"``."""
    allow_networks: tuple[str, ...] = ()
    """Networks taken off the blocked list for every allowed host, e.g. ``"10.20.0.0/16"``."""

    _allow: _Rules = field(init=False, repr=False, compare=False, hash=False)
    _internal: _Rules = field(init=False, repr=False, compare=False, hash=False)
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False, hash=False)
    # (scheme, raw host, port) -> canonical host or the refusal: URL checks are cached.
    _verdicts: dict[tuple[str, str, int], str | EgressBlockedError] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        for name in ("allow", "allow_internal", "allow_networks"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TypeError(
                    f"EgressPolicy {name} must be a tuple of str, got {type(value).__name__}"
                )
            object.__setattr__(self, name, tuple(value))
        if "*" in self.allow_internal:
            raise ValueError(
                "EgressPolicy allow_internal must name hosts, not '*' (use allow_networks),"
                f" got {self.allow_internal!r}"
            )
        networks: list[IPNetwork] = []
        for entry in self.allow_networks:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except (TypeError, ValueError):
                raise ValueError(
                    f"EgressPolicy allow_networks entries must be CIDR networks, got {entry!r}"
                ) from None
        object.__setattr__(self, "_allow", _compile("EgressPolicy", "allow", self.allow))
        object.__setattr__(
            self, "_internal", _compile("EgressPolicy", "allow_internal", self.allow_internal)
        )
        object.__setattr__(self, "_networks", tuple(networks))
        object.__setattr__(self, "_verdicts", {})

    @classmethod
    def only(cls, base_url: str | URL) -> EgressPolicy:
        """Only ``base_url``'s origin, wherever it resolves: the application chose it."""
        url = URL(base_url)
        return cls(allow=(), allow_internal=(str(url.origin()),))

    def _refusal(self, address: IPAddress) -> str | None:
        network = blocked_network(address)
        if network is None or any(address in allowed for allowed in self._networks):
            return None
        return network

    def check_url(self, url: str | URL) -> URL:
        """``url`` with its host in canonical form, or ``EgressBlockedError`` naming the rule."""
        url = URL(url)
        scheme, raw_host = url.scheme, url.raw_host or ""
        port = url.port or 0
        key = (scheme, raw_host, port)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdict(scheme, raw_host, port, url)
            if len(self._verdicts) >= _CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        if isinstance(verdict, EgressBlockedError):
            raise EgressBlockedError(url, verdict.rule)
        return url if verdict == raw_host else url.with_host(verdict)

    def _verdict(self, scheme: str, raw_host: str, port: int, url: URL) -> str | EgressBlockedError:
        if scheme not in _SCHEMES:
            return EgressBlockedError(url, f"scheme {scheme!r} is not http or https")
        try:
            host = normalise_host(raw_host)
        except ValueError as exc:
            return EgressBlockedError(url, f"invalid host ({exc})")
        if self._internal.match(scheme, host, port):
            return host
        if not self._allow.match(scheme, host, port):
            return EgressBlockedError(url, f"host {host!r} is not on the allow-list")
        try:
            address: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            address = None  # a name: its addresses are checked when it is resolved
        if address is not None:
            refusal = self._refusal(address)
            if refusal is not None:
                return EgressBlockedError(
                    url, f"address {host} is in a blocked network ({refusal})"
                )
        return host

    def check_addresses(self, host: str, port: int, addresses: Iterable[str]) -> None:
        """Refuse a resolved name if any address it resolved to is in a blocked network."""
        try:
            name = normalise_host(host)
        except ValueError as exc:
            raise EgressBlockedError(f"http://{host}:{port}/", f"invalid host ({exc})") from None
        for scheme in _SCHEMES:
            if self._internal.match(scheme, name, port):
                return
        for text in addresses:
            refusal = self._refusal(ipaddress.ip_address(text.partition("%")[0]))
            if refusal is not None:
                raise EgressBlockedError(
                    f"http://{host}:{port}/",
                    f"{host} resolved to {text}, in a blocked network ({refusal})",
                )


class GuardedResolver(AbstractResolver):
    """Wraps a resolver; every answer is checked against the policy before it is used.

    Installed in the connector, so the addresses checked are the ones connected to (and
    only checked answers enter aiohttp's DNS cache).
    """

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver) -> None:
        self.policy = policy
        self.inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        self.policy.check_addresses(host, port, [answer["host"] for answer in answers])
        return answers

    async def close(self) -> None:
        await self.inner.close()


def _example() -> dict[str, Any]:
    policy = EgressPolicy(allow=("api.example.com", "*.example.org"))
    outcomes: dict[str, Any] = {}
    for url in (
        "https://api.example.com/v1/items",
        "https://cdn.example.org/logo.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://api.example.com@127.0.0.2/",
        "http://2130706433/",
        "file:///etc/passwd",
    ):
        try:
            outcomes[url] = f"allowed: {policy.check_url(url)}"
        except EgressBlockedError as exc:
            outcomes[url] = f"refused: {exc.rule}"
    return outcomes


if __name__ == "__main__":
    for url, outcome in _example().items():
        print(f"{url} -> {outcome}")
