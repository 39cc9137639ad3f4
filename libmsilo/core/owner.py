"""Whose message it is: the owner (AOR) of a stored message and of a dump
[BEHAVIOUR.md §2.1, §3.2]."""

from __future__ import annotations

from functools import lru_cache

from ..errors import InvalidRequest, InvalidURI
from ..message import SipRequest
from ..records import check_text
from ..uri import URI, NameAddr, aor, parse_address
from .limits import MAX_OWNER_PART

__all__ = [
    "choose_owner",
    "dump_owner",
    "parse_uri_argument",
    "setting_address",
    "split_owner_uri",
]


def _owner_of(
    uri: URI, what: str, *, need_host: bool, key: tuple[str, str] | None = None
) -> tuple[str, str]:
    user, host = aor(uri) if key is None else key  # ``key``: aor(uri), when known already
    if not user:
        raise InvalidRequest(f"{what} {uri} has no user part")
    if need_host and not host:
        raise InvalidRequest(f"{what} {uri} has no host part")
    if len(user) > MAX_OWNER_PART or len(host) > MAX_OWNER_PART:
        raise InvalidRequest(f"{what} {uri}: user and host must be at most {MAX_OWNER_PART} chars")
    return check_text(f"{what} user", user), check_text(f"{what} host", host)


def parse_uri_argument(text: str) -> URI:
    """A URI given by the host, bare or in a name-addr (see :func:`~libmsilo.uri.parse_address`)."""
    return parse_address(text).uri


@lru_cache(maxsize=64)
def setting_address(text: str) -> NameAddr:
    """The From address of a setting or rendered template: URI and display name."""
    return parse_address(text)


def _parse_owner(owner: str) -> URI:
    try:
        return parse_uri_argument(owner)
    except InvalidURI as exc:
        raise InvalidURI(f"owner is not a SIP, SIPS or TEL URI: {exc}") from exc


def choose_owner(request: SipRequest, owner: str | None = None) -> tuple[str, str]:
    """The (username, domain) a stored message is filed under [BEHAVIOUR.md §2.1].

    ``owner`` when given; else the current Request-URI when it is a complete address of record
    (non-empty user and host); else the To URI, as the module documentation promises.
    """
    if owner is not None:
        uri = _parse_owner(owner)
        return _owner_of(uri, "owner", need_host=uri.scheme != "tel")
    try:
        ruri: URI | None = request.ruri_uri
    except InvalidURI:
        ruri = None
    if ruri is not None and ruri.scheme != "tel":
        key = aor(ruri)
        if key[0] and key[1]:
            return _owner_of(ruri, "Request-URI", need_host=True, key=key)
    return _owner_of(request.to_addr.uri, "To URI", need_host=True)


def dump_owner(request: SipRequest | None, owner: str | None) -> tuple[str, str]:
    """The owner whose messages a dump sends: ``owner``, else the To URI [BEHAVIOUR.md §3.2]."""
    if owner is not None:
        uri = _parse_owner(owner)
        return _owner_of(uri, "owner", need_host=uri.scheme != "tel")
    if request is None:
        raise InvalidRequest("dump needs a request or an owner")
    return _owner_of(request.to_addr.uri, "To URI", need_host=True)


def split_owner_uri(uri: str) -> tuple[str, str]:
    """(username, domain) of an inbox AOR given as a URI, for the inbox API."""
    parsed = _parse_owner(uri)
    return _owner_of(parsed, "AOR", need_host=parsed.scheme != "tel")
