"""Limits and character checks shared by the core: what a stored value may hold."""

from __future__ import annotations

import re

from ..errors import InvalidRequest
from ..message import OutgoingMessage
from ..records import MAX_INT64, MAX_TOKEN

# Column sizes of the C modules' silo table [BEHAVIOUR.md §8.2]: longer values are refused,
# never truncated.
MAX_ADDR = 255
MAX_OWNER_PART = 64
MAX_CTYPE = 255
DEFAULT_CTYPE = "text/plain"

# Characters that may not appear in a header value or URI (HTAB is allowed).
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MIME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def encodable(value: str, what: str) -> str:
    """``value`` if every backend can store it (UTF-8, so no lone surrogates), else
    ``InvalidRequest``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{what} is not valid Unicode text ({exc.reason})") from None
    return value


def sendable(msg: OutgoingMessage) -> OutgoingMessage:
    """``msg`` if every header value can go on the wire as UTF-8, else ``InvalidRequest``."""
    values = [("Request-URI", msg.ruri), ("From", msg.from_uri), ("To", msg.to_uri)]
    for what, value in [*values, *msg.headers]:
        encodable(value, what)
    return msg


def checked(value: str, what: str, limit: int) -> str:
    """``value`` if it has no control characters, is valid text and fits ``limit``, else
    ``InvalidRequest``."""
    if CONTROL.search(value):
        raise InvalidRequest(f"{what} contains control characters")
    if len(value) > limit:
        raise InvalidRequest(f"{what} is longer than {limit} characters")
    return encodable(value, what)


def known_mid(mid: object) -> bool:
    """Whether ``mid`` can name a stored message (1 .. 2**63-1); a value that is no int (None,
    str, bool, float) is a caller error: ``InvalidRequest``."""
    if isinstance(mid, bool) or not isinstance(mid, int):
        raise InvalidRequest(f"a message id is an int, not {type(mid).__name__}")
    return 1 <= mid <= MAX_INT64


def checked_token(token: object) -> str | None:
    """A lease token given back by the host: None, or the non-empty str of at most
    ``MAX_TOKEN`` printable ASCII characters a ``Silo`` issued; else ``InvalidRequest``."""
    if token is None:
        return None
    if not isinstance(token, str):
        raise InvalidRequest(f"a lease token is a str, not {type(token).__name__}")
    if not 0 < len(token) <= MAX_TOKEN or not token.isascii() or not token.isprintable():
        raise InvalidRequest(f"{token[:80]!r} is not a lease token (1-{MAX_TOKEN} ASCII chars)")
    return token


def checked_time(value: int, what: str) -> int:
    """An epoch time every backend can store (0 .. 2**63-1), else ``InvalidRequest``."""
    if not 0 <= value <= MAX_INT64:
        raise InvalidRequest(f"{what} {value} is outside 0 .. 2**63-1 epoch seconds")
    return value
