"""Who may press the unsubscribe page's buttons: form bodies only, never from another site, and an undo
(re-subscribe) only from the browser whose click did the unsubscribe, for a short while.

The unsubscribe token in the link is the only authority: whoever holds it may unsubscribe (RFC 8058 wants
exactly that for the One-Click POST of mail clients). A forwarded newsletter hands it to a stranger, so the
token alone must not also allow re-subscribing someone who left. A click on *Unsubscribe* that newly
suppresses the address sets a cookie signed with NEWSLETTER_SECRET (HttpOnly, SameSite=Strict, valid
UNDO_SECONDS and bound to this token); *Re-subscribe* needs it. Later, or from another browser, the person
writes to the newsletter's contact address.

Cross-site requests: browsers say where a request comes from in Sec-Fetch-Site, and in Origin (which is
`null` under our Referrer-Policy: no-referrer, so it tells only when foreign). A per-page form token would
add nothing: anyone with the link can fetch the page and read it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping

from pipeline.tokens import urlsafe_b64

FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
MAX_CONTENT_TYPE = 512
UNDO_SECONDS = 30 * 60
_UNDO_DOMAIN = b"nl-undo-unsubscribe-v1\0"
_UNDO_VALUE = re.compile(r"[0-9]{1,12}\.[A-Za-z0-9_-]{22}")


def form_type(content_type: str) -> str | None:
    """The media type if it is one a form posts (RFC 8058 allows both), else None."""
    if len(content_type) > MAX_CONTENT_TYPE:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    return media if media in FORM_TYPES else None


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def cross_site(headers: Mapping[str, str], *, own: tuple[str, ...]) -> bool:
    """True if the browser marks the request as coming from another site (or another origin of ours).

    `own` are the origins we answer under (the public base_url's and the one this request was sent to).
    Requests that say nothing (old browsers, scripts) are not cross-site *browser* requests: they carry no
    cookie of ours, so they can do no more than the link itself allows.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.strip().lower() not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None or origin.strip().lower() == "null":
        return False
    return origin.strip().lower() not in own


def undo_cookie_name(token: str) -> str:
    """One cookie per unsubscribe link, so undoing one address never needs another's cookie."""
    return "nl_undo_" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


def _undo_mac(secret: bytes, token: str, expires: int) -> str:
    digest = hmac.digest(secret, _UNDO_DOMAIN + token.encode("utf-8") + b"\0" + str(expires).encode("ascii"),
                         "sha256")
    return urlsafe_b64(digest[:16])


def undo_cookie(secret: bytes, token: str, *, now: float) -> str:
    """The cookie value that lets this browser undo the unsubscribe of `token` until now + UNDO_SECONDS."""
    expires = int(now) + UNDO_SECONDS
    return f"{expires}.{_undo_mac(secret, token, expires)}"


def may_undo(secret: bytes, token: str, cookie: str | None, *, now: float) -> bool:
    """True only for an unexpired cookie that undo_cookie made for this very token and secret."""
    if cookie is None or not _UNDO_VALUE.fullmatch(cookie):
        return False
    stamp, mac = cookie.split(".")
    expires = int(stamp)
    if not now <= expires <= now + UNDO_SECONDS:
        return False
    return hmac.compare_digest(mac.encode("ascii"), _undo_mac(secret, token, expires).encode("ascii"))
