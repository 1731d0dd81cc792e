"""How a webhook leaves the server: signed with the Standard Webhooks scheme OpenAI uses, and
sent only to addresses the operator's rule allows.

Signature: `v1,` + base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}")), where
the key is the base64 after a secret's `whsec_` prefix; the exact bytes sent are signed, so a
receiver (openai's `client.webhooks.unwrap`, or any Standard Webhooks library) checks them as
they arrive.

A tenant's endpoint URL makes this server send a request: by default it may reach only public
(globally routable) addresses, never loopback, link-local (169.254.0.0/16, where cloud metadata
services answer), private, shared (100.64.0.0/10) or reserved ranges. The operator may allow more
networks (--webhook-allow-network CIDR). The rule is checked on the address each connection
really uses, after DNS, so a name that later resolves elsewhere gains nothing; redirects are not
followed (a 3xx is a failed attempt, as OpenAI's are) and no proxy from the environment is used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
from urllib.parse import urlsplit

import httpcore

from tailor import __version__

TIMEOUT_S = 15.0  # the Standard Webhooks spec recommends 15-30 s
USER_AGENT = f"tailor/{__version__} (webhooks)"


class Refused(Exception):
    """The URL or the address it resolves to is not one this server may send to."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret; ValueError when it is not one."""
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret starts with whsec_ followed by base64")
    try:
        key = base64.b64decode(secret[6:], validate=True)
    except ValueError as exc:
        raise ValueError("the part after whsec_ is not valid base64") from exc
    if len(key) < 16:
        raise ValueError(f"the secret's key is {len(key)} bytes; use 24 to 64 random bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Policy:
    """Which addresses webhook requests may reach: public ones, plus the `allowed` networks."""

    def __init__(self, allowed: list[str] | tuple = (), *, everything: bool = False):
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed]
        self.everything = everything  # the operator's own endpoints

    def check_url(self, url: str) -> tuple[str, int]:
        """(host, port) of an http(s) URL whose host resolves only to allowed addresses."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused("give an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise Refused("a webhook URL may not hold a user name or password")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.resolve(parts.hostname, port)
        return parts.hostname, port

    def resolve(self, host: str, port: int) -> str:
        """The address to connect to; Refused when any address the name has is not allowed."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise Refused(f"the host {host!r} does not resolve") from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            if not self.allows(address):
                raise Refused(f"{host} resolves to {address}, which this server does not send webhooks to "
                              "(loopback, link-local, private and reserved addresses are refused unless the "
                              "operator allows them with --webhook-allow-network)")
        return addresses[0]

    def allows(self, address: str) -> bool:
        if self.everything:
            return True
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allowed):
            return True
        return ip.is_global and not ip.is_multicast


class _CheckedBackend(httpcore.SyncBackend):
    """Connects only to an address the policy allows, chosen after resolving the name once."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        address = self.policy.resolve(host, port)
        return super().connect_tcp(address, port, timeout, local_address, socket_options)


def post(url: str, body: bytes, headers: dict[str, str], policy: Policy, timeout: float = TIMEOUT_S) -> int:
    """POST once; the HTTP status (redirects are not followed). Raises Refused, or OSError /
    httpcore errors for a connection that fails."""
    with httpcore.ConnectionPool(network_backend=_CheckedBackend(policy), retries=0) as pool:
        response = pool.request("POST", url, headers={**headers, "content-length": str(len(body))}, content=body,
                                extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout,
                                                        "pool": timeout}})
        return response.status
