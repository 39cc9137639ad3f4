"""Credentials out of sight: the one place that masks passwords in URLs and in text.

A URL's password (``scheme://user:password@host``) and the values of query parameters that hold
secrets (``?password=``, ``?sslpassword=``, …) are replaced by ``***``, as SQLAlchemy renders
URLs. Everything libmsilo prints or logs about a store goes through :func:`mask_url` (a URL) or
:func:`mask_text` (a message that may quote one); :class:`~libmsilo.errors.MsiloError` applies
:func:`mask_text` to its own message.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_text", "mask_url"]

#: What a secret is replaced with.
MASK = "***"

# Query parameters whose value is a secret (compared lower-case, ``_``/``-`` ignored).
_SECRET_PARAMS = (
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "token",
    "sslpassword",
    "tlscertificatekeyfilepassword",
    "sslkeypassword",
    "authmechanismproperties",
)
_PARAM = r"(?i:[A-Za-z_-]*(?:" + "|".join(_SECRET_PARAMS) + r"))"
# ``scheme://user:password@`` inside free text: the password is masked.
_URL_CREDENTIALS = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@'\"]*:)(?P<secret>[^\s'\"]*)(?P<tail>@)"
)
# ``?password=value`` / ``&password=value`` inside free text or a URL's query.
_QUERY_SECRET = re.compile(r"(?P<head>[?&]" + _PARAM + r"=)(?P<secret>[^&#\s'\"]*)(?P<tail>)")


def mask_url(url: str) -> str:
    """``url`` with the password of its user info and its secret query values as ``***``.

    Works on any scheme and on several hosts (``mongodb://u:p@h1,h2/db``); the user name, hosts,
    path and other parameters stay as they are, so the result still says where the store is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:  # not a URL; still hide a ``user:password@`` prefix
        scheme, rest = "", url
    # The last "@" ends the user info: a password with an unescaped "@", "/" or "?" is still
    # hidden whole (an "@" later in the URL can only make more of it hidden, never less).
    creds, at, tail = rest.rpartition("@")
    if at and ":" in creds:
        creds = creds.split(":", 1)[0] + ":" + MASK
    hosts, qmark, query = tail.partition("?")
    if qmark:
        query = _QUERY_SECRET.sub(_masked, "?" + query)[1:]
    return f"{scheme}{sep}{creds}{at}{hosts}{qmark}{query}"


def mask_text(text: str) -> str:
    """``text`` with the credentials of every URL it quotes masked (see :func:`mask_url`)."""
    if "://" not in text and "=" not in text:
        return text  # nothing that could hold a URL password or a secret parameter
    return _QUERY_SECRET.sub(_masked, _URL_CREDENTIALS.sub(_masked, text))


def _masked(match: re.Match[str]) -> str:
    return match.group("head") + (MASK if match.group("secret") else "") + match.group("tail")
