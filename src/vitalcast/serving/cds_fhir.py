"""Reading the EHR's FHIR server for a CDS Hooks request without becoming an open proxy.

A CDS Hooks request may name ``fhirServer`` and hand over ``fhirAuthorization`` so that the
service can read what the prefetch lacks. Taken at face value, that lets any caller make
vitalcast send requests, with a bearer token of the caller's choosing, to any address it
can reach (server-side request forgery: cloud metadata endpoints, admin ports on the
private network). So the caller in :mod:`.cds_sources` only builds a reader for requests
signed by a trusted EHR (``VITALCAST_CDS_TRUSTED_ISSUERS``), and this module checks the
server it is told to read:

- https only; plain http only in development and test mode, and only to loopback (the
  tests serve FHIR from a local server);
- the host must resolve to public addresses only (no private, loopback, link-local,
  shared or reserved ones, outside that development allowance), or to addresses in the
  networks the operator lists in ``VITALCAST_CDS_FHIR_NETWORKS`` (an EHR's FHIR server
  is usually on the hospital's private network); loopback, link-local (the cloud
  metadata service), multicast and unspecified networks cannot be listed;
- the connection goes to the address that was checked (the host name is only used for
  the ``Host`` header and TLS verification), so a DNS answer that changes between check
  and connect cannot redirect it; redirects are not followed, proxies from the
  environment are not used, and ``next`` links of paged searches are followed only when
  they stay on the same server under the same base path: the access token never leaves
  ``fhirServer``.

Errors say what failed ("the EHR's FHIR server answered 404 for the Patient resource")
and never carry the URL or the patient id, which may identify the patient.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from vitalcast.errors import PreconditionFailed

TIMEOUT_S = 5.0
PAGE_SIZE = 1000  # _count of each search page
MAX_PAGES = 10  # pages followed per search; a longer result is refused, never cut short
MAX_BODY_BYTES = 20 * 1024 * 1024
_LOOPBACK_ENVS = frozenset({"development", "test"})
_DEFAULT_PORTS = {"https": 443, "http": 80}

Resolver = Callable[[str, int], list[str]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class FhirTarget:
    """A checked ``fhirServer``: where to connect (``address``) and what to call it."""

    scheme: str
    host: str  # as named in fhirServer: the Host header and the TLS server name
    port: int
    base_path: str  # without a trailing slash
    address: str  # the checked IP address the connection goes to

    def owns(self, url: str) -> bool:
        """Whether ``url`` is on this server under its base path (a safe ``next`` link)."""
        parts = urlsplit(url)
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), -1)
        except ValueError:
            return False
        path = parts.path.rstrip("/")
        if any(segment in (".", "..") for segment in path.split("/")):
            return False
        return (
            parts.scheme.lower() == self.scheme
            and (parts.hostname or "").lower() == self.host.lower()
            and port == self.port
            and not parts.username
            and (path == self.base_path or path.startswith(self.base_path + "/"))
        )


def _refuse(message: str) -> PreconditionFailed:
    return PreconditionFailed(message, details=[{"loc": ["body", "fhirServer"], "msg": message}])


def _address(text: str) -> Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: list[str]) -> tuple[Network, ...]:
    """The operator's allowed networks, or ValueError naming the entry that cannot be one.

    Loopback, link-local, multicast and unspecified networks are refused even when
    listed: whatever the EHR names, vitalcast must not reach itself or the cloud metadata
    service with a caller's token.
    """
    networks = []
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not a network such as 10.20.0.0/16") from None
        if any(
            network.overlaps(forbidden)
            for forbidden in _NEVER
            if forbidden.version == network.version
        ):
            raise ValueError(
                f"{entry!r} overlaps loopback, link-local, multicast or unspecified addresses,"
                " which are never contacted"
            )
        networks.append(network)
    return tuple(networks)


_NEVER: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "::/128",
        "::1/128",
        "fe80::/10",
        "ff00::/8",
    )
)


def check_fhir_server(
    url: str,
    *,
    env: str,
    networks: tuple[Network, ...] = (),
    resolve: Resolver = _system_resolve,
) -> FhirTarget:
    """Check ``fhirServer`` against the policy in the module docstring.

    Raises:
        PreconditionFailed: the server may not be contacted (the message says why,
            without the URL).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        raise _refuse("fhirServer has an invalid port") from None
    if scheme not in _DEFAULT_PORTS or not host or parts.query or parts.fragment:
        raise _refuse("fhirServer must be an https base URL without query or fragment")
    if parts.username or parts.password:
        raise _refuse("fhirServer must not carry credentials; use fhirAuthorization")
    loopback_ok = env in _LOOPBACK_ENVS
    try:
        texts = [host] if _is_ip(host) else resolve(host, port)
        addresses = [_address(t) for t in texts]
    except (OSError, UnicodeError, ValueError):
        raise _refuse("the host of fhirServer could not be resolved") from None
    if not addresses:
        raise _refuse("the host of fhirServer could not be resolved")
    if scheme == "http" and not (loopback_ok and all(a.is_loopback for a in addresses)):
        raise _refuse("fhirServer must be an https URL")
    for address in addresses:
        allowed = (
            (address.is_global and not address.is_multicast)
            or (loopback_ok and address.is_loopback)
            or any(address in network for network in networks)
        )
        if not allowed:
            raise _refuse(
                "the host of fhirServer resolves to a private, loopback, link-local or"
                " reserved address, which this service does not contact (list the EHR's"
                " network in VITALCAST_CDS_FHIR_NETWORKS to allow a private one)"
            )
    return FhirTarget(scheme, host, port, parts.path.rstrip("/"), str(addresses[0]))


def _is_ip(host: str) -> bool:
    try:
        _address(host)
    except ValueError:
        return False
    return True


class FhirReader:
    """Reads one checked FHIR server with the hook's access token (see module docstring)."""

    def __init__(
        self, target: FhirTarget, access_token: str | None, *, verify: ssl.SSLContext | bool = True
    ) -> None:
        """``verify``: the TLS trust (default: the system's CAs through httpx)."""
        self.target = target
        headers = {"Accept": "application/fhir+json"}
        if access_token:
            headers["Authorization"] = f"Bearer {access_token}"
        default = _DEFAULT_PORTS[target.scheme] == target.port
        host_header = target.host if default else f"{target.host}:{target.port}"
        if ":" in target.host and not default:
            host_header = f"[{target.host}]:{target.port}"
        elif ":" in target.host:
            host_header = f"[{target.host}]"
        headers["Host"] = host_header
        self._client = httpx.Client(
            timeout=TIMEOUT_S,
            headers=headers,
            follow_redirects=False,
            trust_env=False,
            verify=verify,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FhirReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def read(self, what: str, path: str) -> dict[str, Any]:
        """GET ``base/path`` (e.g. ``Patient/123``); ``what`` names it in errors."""
        return self._get(what, self._url(path), None)

    def search(self, what: str, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """A search's resources, following ``next`` links (at most :data:`MAX_PAGES`)."""
        bundle = self._get(what, self._url(path), params)
        return self.follow(what, bundle, pages_read=1)

    def follow(
        self, what: str, bundle: dict[str, Any], *, pages_read: int = 0
    ) -> list[dict[str, Any]]:
        """The resources of ``bundle`` and of the pages its ``next`` links lead to.

        Raises:
            PreconditionFailed: a link leaves the server, or more than :data:`MAX_PAGES`
                pages: the result would be incomplete, and a stay scored from part of its
                data would be scored wrong.
        """
        resources: list[dict[str, Any]] = []
        while True:
            if bundle.get("resourceType") != "Bundle":
                raise _refuse(f"the EHR's FHIR server did not answer the {what} with a Bundle")
            problems = bundle_problems(bundle)
            if problems:
                loc, msg = problems[0]
                where = ".".join(str(part) for part in ["Bundle", *loc])
                raise _refuse(
                    f"the EHR's FHIR server answered the {what} with a malformed Bundle"
                    f" ({where}: {msg})"
                )
            resources += bundle_resources(bundle)
            link = next_link(bundle)
            if link is None:
                return resources
            if not self.target.owns(link):
                raise _refuse(
                    f"the EHR's FHIR server gave a next-page link for the {what} that"
                    " leads outside fhirServer; it was not followed"
                )
            if pages_read >= MAX_PAGES:
                raise _refuse(
                    f"the {what} has more than {MAX_PAGES} pages of {PAGE_SIZE}; vitalcast"
                    " does not score a stay from part of its data"
                )
            bundle = self._get(what, self._pinned(httpx.URL(link)), None)
            pages_read += 1

    def _url(self, path: str) -> httpx.URL:
        t = self.target
        return self._pinned(httpx.URL(f"{t.scheme}://placeholder{t.base_path}/{path}"))

    def _pinned(self, url: httpx.URL) -> httpx.URL:
        return url.copy_with(host=self.target.address, port=self.target.port)

    def _get(self, what: str, url: httpx.URL, params: dict[str, str] | None) -> dict[str, Any]:
        extensions = {"sni_hostname": self.target.host} if self.target.scheme == "https" else {}
        try:
            with self._client.stream("GET", url, params=params, extensions=extensions) as rsp:
                if rsp.status_code >= 300:
                    raise _refuse(
                        f"the EHR's FHIR server answered {rsp.status_code} for the {what}"
                    )
                body = bytearray()
                for chunk in rsp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise _refuse(
                            f"the EHR's FHIR server sent too large an answer for the {what}"
                        )
        except httpx.TimeoutException:
            raise _refuse(f"the EHR's FHIR server did not answer in time for the {what}") from None
        except httpx.HTTPError:
            raise _refuse(f"the EHR's FHIR server could not be reached for the {what}") from None
        try:
            data = json.loads(bytes(body))
        except ValueError:
            raise _refuse(f"the EHR's FHIR server did not send FHIR JSON for the {what}") from None
        if not isinstance(data, dict):
            raise _refuse(f"the EHR's FHIR server did not send a FHIR resource for the {what}")
        return data


def next_link(bundle: dict[str, Any]) -> str | None:
    """The ``next`` page link of a search Bundle, if any (see :func:`bundle_problems`)."""
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a Bundle that :func:`bundle_problems` found well formed."""
    entries = bundle.get("entry")
    return [e["resource"] for e in entries] if isinstance(entries, list) else []


def bundle_problems(bundle: dict[str, Any]) -> list[tuple[list[str | int], str]]:
    """Where a search Bundle is malformed: ``(path inside the Bundle, what is wrong)``.

    A Bundle whose ``entry`` is not a list of entries holding resources, or whose ``link``
    is not a list of links, cannot be read in full; reading what can be read would score
    a stay from part of its data without anyone knowing. Callers turn these into a 400
    (prefetch sent by the caller) or a 412 (an answer of ``fhirServer``). Messages name
    the place, never the value (which may identify the patient).
    """
    problems: list[tuple[list[str | int], str]] = []
    entries = bundle.get("entry")
    if entries is not None and not isinstance(entries, list):
        problems.append((["entry"], "must be a list of entries"))
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            problems.append((["entry", i], "must be an object"))
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            problems.append(
                (["entry", i, "resource"], "must be a FHIR resource (with resourceType)")
            )
    links = bundle.get("link")
    if links is not None and not isinstance(links, list):
        problems.append((["link"], "must be a list of links"))
    for i, link in enumerate(links if isinstance(links, list) else []):
        if not isinstance(link, dict):
            problems.append((["link", i], "must be an object"))
        elif link.get("relation") == "next" and not isinstance(link.get("url"), str):
            problems.append((["link", i, "url"], "the next-page link needs a URL string"))
    return problems
