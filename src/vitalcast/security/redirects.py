"""Where to send a person after sign-in: back to the page they asked for, and nowhere else.

The target arrives in a ``next`` parameter that anyone can write into a link, so it is an
open-redirect and header-injection vector unless checked. Browsers are lenient with
what they treat as "another site": ``//evil``, ``/\\evil`` and ``\\\\evil`` are all
host-relative URLs to them, and they drop tabs and newlines inside a URL (``/\\t/evil``
becomes ``//evil``). So the rule is an allow-list, not a deny-list: a target is accepted
only when it is printable ASCII without a backslash, is a path on this server (no scheme,
no host) and names one of the UI's pages for GET. Anything else sends the person to the
ward list, as if no target had been given.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from flask import current_app
from werkzeug.exceptions import HTTPException

# The blueprints whose GET routes are pages a person navigates to.
PAGE_BLUEPRINTS = frozenset({"web", "web_patient", "web_models", "web_admin"})
# GET routes of those blueprints that are not pages to land on: the sign-in page itself
# (a loop), the live-update row fragment and the session keep-alive (no page at all).
NOT_LANDING_PAGES = frozenset({"web.login", "web.ward_row", "web.keepalive"})
MAX_TARGET_CHARS = 2048


def safe_next(target: str | None) -> str | None:
    """``target`` when it is one of this UI's pages on this server, else None."""
    if not target or len(target) > MAX_TARGET_CHARS or not _plain_local_path(target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.fragment:
        return None
    if not _is_landing_page(unquote(parts.path)):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _plain_local_path(target: str) -> bool:
    """A path from this server's root, written so that no browser reads a host into it:
    visible ASCII only (no controls, spaces, tabs, CR/LF or look-alike Unicode), no
    backslash, one leading slash."""
    printable = all("\x21" <= ch <= "\x7e" for ch in target)
    return printable and "\\" not in target and target.startswith("/") and target[1:2] != "/"


def _is_landing_page(path: str) -> bool:
    """Whether GET ``path`` routes to a UI page (not an API, a fragment or a file)."""
    adapter = current_app.url_map.bind("localhost")
    try:
        endpoint, _ = adapter.match(path, method="GET")
    except HTTPException:  # not found, method not allowed, or a redirect to another path
        return False
    blueprint = endpoint.partition(".")[0] if "." in endpoint else ""
    return blueprint in PAGE_BLUEPRINTS and endpoint not in NOT_LANDING_PAGES
