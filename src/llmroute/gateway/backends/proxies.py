"""Which forward proxy an upstream request goes through: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` /
`NO_PROXY` read the way urllib and httpx read them, or one proxy given in the configuration.

    settings = ProxySettings.from_env()          # at gateway startup, never at import
    settings.select("https", "api.openai.com", 443)  # -> Proxy(host, port) or None

Environment rules (`ProxySettings.from_env`):

- `https_proxy` serves https:// upstreams, `http_proxy` http:// ones, `all_proxy` both when the
  scheme's own variable is unset. The lowercase name wins over the uppercase one (set but empty
  lowercase switches the uppercase off), as in urllib. `HTTP_PROXY` is ignored when
  `REQUEST_METHOD` is set (a CGI environment, where a client's `Proxy:` header becomes
  `HTTP_PROXY`: "httpoxy").
- `no_proxy` / `NO_PROXY`: entries separated by commas or spaces; `*` bypasses the proxy for every
  host; `example.com`, `.example.com` and `*.example.com` match `example.com` and every subdomain
  (on a label boundary: not `badexample.com`); `host:port` matches that port only; an IP address
  matches itself, a CIDR block (`10.0.0.0/8`, `fd00::/8`) every address in it. Case-insensitive.
- Loopback upstreams (`localhost`, `*.localhost`, 127.0.0.0/8, ::1) are never sent to a proxy
  from the environment; a proxy named in the configuration (`ProxySettings.fixed`) is explicit and
  serves every upstream, loopback included.

Only `http://` proxies are supported (HTTPS upstreams still get end-to-end TLS, through a
CONNECT tunnel). Credentials in the proxy URL (`http://user:pass@proxy:3128`) become a
`Proxy-Authorization: Basic` header; they never appear in an error message or a `repr`.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["Proxy", "ProxySettings", "is_loopback", "parse_proxy_url"]


@dataclass(frozen=True)
class Proxy:
    """A forward HTTP proxy: where to connect and the `Proxy-Authorization` value (or None)."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never the credentials
        auth = ", with credentials" if self.authorization else ""
        return f"Proxy({self.host}:{self.port}{auth})"


def parse_proxy_url(url: str, source: str = "proxy") -> Proxy:
    """The `Proxy` of `http://[user:password@]host[:port]` (no scheme: http; default port 80).

    Raises ValueError naming `source` (e.g. the variable or config field) but never the URL
    itself, which may hold a password."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        u = urlsplit(text)
        port = u.port
    except ValueError:
        raise ValueError(f"{source}: not a valid proxy URL (want http://[user:password@]host:port)") from None
    scheme = u.scheme.lower()
    if scheme != "http":
        raise ValueError(
            f"{source}: proxy scheme {scheme!r} is not supported; use an http:// proxy "
            "(https:// upstreams still get end-to-end TLS through its CONNECT tunnel)"
        )
    if not u.hostname:
        raise ValueError(f"{source}: the proxy URL has no host (want http://[user:password@]host:port)")
    auth = None
    if u.username is not None or u.password is not None:
        cred = f"{unquote(u.username or '')}:{unquote(u.password or '')}"
        auth = "Basic " + base64.b64encode(cred.encode()).decode("ascii")
    return Proxy(u.hostname, port or 80, auth)


def is_loopback(host: str) -> bool:
    """`localhost`, a `.localhost` name, or a loopback IP address (127.0.0.0/8, ::1)."""
    h = host.strip("[]").rstrip(".").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _env(environ: Mapping[str, str], name: str) -> str | None:
    """The value of `name` (lowercase wins; an empty lowercase value switches the uppercase off)."""
    low = environ.get(name.lower())
    if low is not None:
        return low.strip() or None
    up = environ.get(name.upper())
    return up.strip() if up and up.strip() else None


@dataclass(frozen=True)
class _NoProxyEntry:
    domain: str | None = None  # matches the name and its subdomains
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        d = self.domain
        return d is not None and (host == d or host.endswith("." + d))


def _parse_no_proxy(value: str) -> tuple[bool, tuple[_NoProxyEntry, ...]]:
    """(bypass everything, the entries) of a NO_PROXY value; unparseable entries are ignored."""
    entries: list[_NoProxyEntry] = []
    for raw in value.replace(",", " ").split():
        item = raw.strip().lower()
        if item == "*":
            return True, ()
        if "://" in item:  # a scheme is not part of the rules (httpx accepts it): match the host
            item = item.split("://", 1)[1].rstrip("/")
        port: int | None = None
        if item.startswith("["):  # [v6]:port or [v6]
            close = item.find("]")
            if close < 0:
                continue
            rest = item[close + 1 :]
            item = item[1:close]
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif item.count(":") == 1:
            host, _, p = item.partition(":")
            if p.isdigit():
                item, port = host, int(p)
        try:
            entries.append(_NoProxyEntry(network=ipaddress.ip_network(item, strict=False), port=port))
            continue
        except ValueError:
            pass
        domain = item.lstrip("*").lstrip(".").rstrip(".")
        if domain:
            entries.append(_NoProxyEntry(domain=domain, port=port))
    return False, tuple(entries)


class ProxySettings:
    """Picks the proxy for an upstream (see the module docstring); `none()` never proxies."""

    def __init__(
        self,
        http: Proxy | None = None,
        https: Proxy | None = None,
        no_proxy: str = "",
        explicit: bool = False,
    ) -> None:
        self.http = http
        self.https = https
        self.explicit = explicit
        self.bypass_all, self.no_proxy = _parse_no_proxy(no_proxy)

    @classmethod
    def none(cls) -> ProxySettings:
        """Never use a proxy."""
        return cls()

    @classmethod
    def fixed(cls, url: str, source: str = "proxy") -> ProxySettings:
        """Every upstream, loopback included, through the proxy at `url`."""
        p = parse_proxy_url(url, source)
        return cls(http=p, https=p, explicit=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProxySettings:
        """The proxies of the environment (`os.environ` by default); ValueError names a bad variable."""
        env = os.environ if environ is None else environ
        all_ = _env(env, "all_proxy")
        https = _env(env, "https_proxy") or all_
        http_src = "http_proxy"
        if "REQUEST_METHOD" in env:  # CGI: only the lowercase name can be trusted
            http = (env.get("http_proxy") or "").strip() or None
        else:
            http = _env(env, "http_proxy")
        if http is None:
            http, http_src = all_, "all_proxy"
        return cls(
            http=parse_proxy_url(http, http_src.upper()) if http else None,
            https=parse_proxy_url(https, "HTTPS_PROXY/ALL_PROXY") if https else None,
            no_proxy=_env(env, "no_proxy") or "",
        )

    @classmethod
    def from_option(cls, option: str | None, environ: Mapping[str, str] | None = None) -> ProxySettings:
        """From a configuration value: `"env"` (or None), `"none"`, or a proxy URL."""
        if option is None or option == "env":
            return cls.from_env(environ)
        if option == "none":
            return cls.none()
        return cls.fixed(option)

    def select(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy for an upstream `scheme://host:port`, or None to connect directly."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.explicit:
            return proxy
        if self.bypass_all or is_loopback(host):
            return None
        h = host.strip("[]").rstrip(".").lower()
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(h)
        except ValueError:
            ip = None
        if any(e.matches(h, ip, port) for e in self.no_proxy):
            return None
        return proxy

    def __repr__(self) -> str:
        return f"ProxySettings(http={self.http!r}, https={self.https!r}, explicit={self.explicit})"
