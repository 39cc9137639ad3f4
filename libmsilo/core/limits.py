"""Limits and character checks shared by the core: what a stored value may hold."""

from __future__ import annotations

import re

from ..errors import InvalidRequest
from ..message import OutgoingMessage
from ..records import check_text

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


def sendable(msg: OutgoingMessage) -> OutgoingMessage:
    """``msg`` if every header value can go on the wire as UTF-8, else ``InvalidRequest``."""
    values = [("Request-URI", msg.ruri), ("From", msg.from_uri), ("To", msg.to_uri)]
    for what, value in [*values, *msg.headers]:
        check_text(what, value)
    return msg


def checked(value: str, what: str, limit: int) -> str:
    """``value`` if it has no control characters, is valid text and fits ``limit``, else
    ``InvalidRequest``."""
    if CONTROL.search(value):
        raise InvalidRequest(f"{what} contains control characters")
    if len(value) > limit:
        raise InvalidRequest(f"{what} is longer than {limit} characters")
    return check_text(what, value)
