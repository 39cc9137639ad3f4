"""``MsiloSettings``: every msilo module parameter under its own name, plus the library's own.

Values come from keyword arguments, ``MSILO_*`` environment variables or a ``.env`` file
(pydantic-settings), or from a server config via :meth:`MsiloSettings.from_opensips_cfg`. Templates
and the time zone are checked and compiled here, once, so a bad value fails at start-up.

An unknown keyword argument is an error (a typo in code); variables of the environment or of
``.env`` that are not libmsilo's are ignored, since other programs share both. An unknown
``MSILO_*`` variable is logged once by name (``MSILO_TEST_*`` belongs to the test suite).
"""

from __future__ import annotations

import enum
import logging
import os
import re
from collections.abc import Iterator
from datetime import tzinfo
from types import MappingProxyType
from typing import Any

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .cfgpp import Defines, preprocess
from .core.policy import TEMPLATE_NAMES, TRANSACTION_TIMEOUT, Policy
from .errors import InvalidURI, SettingsError
from .masking import mask_url
from .modparam import read_modparams
from .records import IDENTIFIER_RE, DriverOptions, StoreLayout
from .templating import Template, compile_template
from .timefmt import local_zone, parse_zone
from .uri import NameAddr, parse_address

__all__ = ["MsiloSettings", "Profile"]

log = logging.getLogger("libmsilo")

_ENV_PREFIX = "MSILO_"
_warned_names: set[str] = set()


class Profile(enum.Enum):
    """Presets for running beside (or instead of) an existing C server."""

    LIBMSILO = "libmsilo"
    OPENSIPS = "opensips"
    KAMAILIO = "kamailio"


# What the real modules' code does, where it differs from their documentation (BEHAVIOUR.md §1.2).
_PRESETS: dict[Profile, dict[str, Any]] = {
    Profile.LIBMSILO: {},
    Profile.OPENSIPS: {"sc_mid": "id", "check_time": 60, "clean_period": 10, "add_contact": True},
    Profile.KAMAILIO: {"sc_mid": "id", "check_time": 60, "clean_period": 10, "add_contact": False},
}

_COLUMNS = (
    "sc_mid",
    "sc_from",
    "sc_to",
    "sc_uri_user",
    "sc_uri_host",
    "sc_body",
    "sc_ctype",
    "sc_exp_time",
    "sc_inc_time",
    "sc_snd_time",
    "sc_stored_hdrs",
    "sc_callid",
)
_C_INT = re.compile(r"[+-]?[0-9]+")
_AVP_SPEC = re.compile(r"\$avp\(([A-Za-z0-9_.:-]+)\)|([A-Za-z_][A-Za-z0-9_.:-]*)")


class MsiloSettings(BaseSettings):
    """msilo configuration; invalid values raise :class:`SettingsError` naming the parameter."""

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
        validate_default=True,
        hide_input_in_errors=True,  # a rejected value may be a URL with its password
    )

    db_url: str = "sqlite:///msilo.db"
    db_table: str = "silo"
    from_address: str | None = None
    contact_hdr: str | None = None
    offline_message: str | None = None
    content_type_hdr: str | None = None
    reminder: str | None = None
    outbound_proxy: str | None = None
    expire_time: int = Field(259200, gt=0)
    check_time: int = Field(30, gt=0)
    lease_time: int | None = Field(None, gt=0)
    send_time: int = Field(0, ge=0)
    clean_period: int = Field(5, gt=0)
    use_contact: bool = True
    sc_mid: str = "mid"
    sc_from: str = "src_addr"
    sc_to: str = "dst_addr"
    sc_uri_user: str = "username"
    sc_uri_host: str = "domain"
    sc_body: str = "body"
    sc_ctype: str = "ctype"
    sc_exp_time: str = "exp_time"
    sc_inc_time: str = "inc_time"
    sc_snd_time: str = "snd_time"
    snd_time_avp: str | None = None
    add_date: bool = True
    max_messages: int = 0
    add_contact: bool = True
    # Kamailio's own parameters.
    extra_hdrs: str | None = None
    extra_hdrs_avp: str | None = None
    sc_stored_hdrs: str = "extra_hdrs"
    sc_callid: str = "callid"
    use_mode: int = Field(0, ge=0)
    skip_notification_flag: int = Field(-1, ge=-1, le=31)

    timezone: str | None = None
    profile: Profile = Profile.LIBMSILO
    max_body_size: int = Field(65536, gt=0)
    max_attempts: int = Field(0, ge=0)
    notify_loop_guard: bool = True
    db_timeout: float = Field(5.0, gt=0)
    db_pool_size: int = Field(10, ge=1)
    group_commit: bool = True
    group_commit_size: int = Field(64, ge=1)
    group_commit_wait: float = Field(0.0, ge=0, le=1)
    group_commit_flushers: int = Field(0, ge=0)
    redis_wait_replicas: int = Field(0, ge=0)
    redis_wait_timeout: float = Field(1.0, gt=0)
    redis_wait_aof: bool = False

    _templates: dict[str, Template] = PrivateAttr(default_factory=dict)
    _zone: tzinfo = PrivateAttr(default_factory=local_zone)

    def __init__(self, **values: Any) -> None:
        # pydantic-settings' own init options (``_env_file``, ...) start with "_".
        unknown = sorted(
            k for k in values if not k.startswith("_") and k not in type(self).model_fields
        )
        if unknown:
            raise SettingsError("; ".join(f"{k}: not a libmsilo setting" for k in unknown))
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from exc
        _warn_unknown_variables(set(type(self).model_fields), values.get("_env_file", ".env"))

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        raw = data.get("profile", Profile.LIBMSILO)
        try:
            profile = Profile(raw.value if isinstance(raw, Profile) else str(raw).lower())
        except ValueError:
            return data  # the field validator reports the bad profile name
        return {**_PRESETS[profile], **data, "profile": profile}

    @field_validator("db_table", *_COLUMNS)
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not IDENTIFIER_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*)")
        return value

    @field_validator("add_date", "use_contact", "add_contact", mode="before")
    @classmethod
    def _c_flag(cls, value: Any) -> Any:
        # The modules read these as C ints: any non-zero value switches the option on.
        if isinstance(value, int) and not isinstance(value, bool):
            return value != 0
        if isinstance(value, str) and _C_INT.fullmatch(value.strip()):
            return int(value.strip()) != 0
        return value

    @field_validator("max_messages")
    @classmethod
    def _no_limit(cls, value: int) -> int:
        return max(value, 0)  # the modules treat any value <= 0 as "no limit"

    @field_validator("reminder", "outbound_proxy")
    @classmethod
    def _sip_address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        address = _address(value)
        if info.field_name == "outbound_proxy":
            uri = address.uri
            if uri.scheme not in ("sip", "sips"):
                raise ValueError(f"{value!r} is not a SIP or SIPS URI of a proxy")
            return str(uri)  # the next hop is a URI; a name-addr's <> and name are dropped
        return value.strip()

    @field_validator("snd_time_avp", "extra_hdrs_avp")
    @classmethod
    def _avp_spec(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _AVP_SPEC.fullmatch(value.strip())
        if not match:
            raise ValueError(f"{value!r} is not an AVP spec such as $avp(snd_time)")
        return match.group(1) or match.group(2)

    @model_validator(mode="after")
    def _compile(self) -> MsiloSettings:
        if self.offline_message is not None and self.content_type_hdr is None:
            raise ValueError("offline_message needs content_type_hdr (the notice's Content-Type)")
        dialect = "kamailio" if self.profile is Profile.KAMAILIO else "opensips"
        for name in TEMPLATE_NAMES:
            source = getattr(self, name)
            if source is not None:
                try:
                    self._templates[name] = compile_template(source, dialect)
                except SettingsError as exc:
                    raise ValueError(f"{name}: {exc}") from exc
        from_t = self._templates.get("from_address")
        if from_t is not None and not from_t.variables:
            # A fixed From is checked now; one built from the request is checked per notice.
            try:
                _address(from_t.source)
            except ValueError as exc:
                raise ValueError(f"from_address: {exc}") from exc
        if self.timezone is not None:
            try:
                self._zone = parse_zone(self.timezone)
            except SettingsError as exc:  # its message names the setting already
                raise ValueError(str(exc)) from exc
        try:
            self.layout()
        except ValueError as exc:
            raise ValueError(f"sc_*: {exc}") from exc
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr() and str() show ``db_url`` with its password as ``***``."""
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "db_url" and isinstance(value, str) else value

    # ---- derived values ----------------------------------------------------------------------

    @property
    def zone(self) -> tzinfo:
        """The time zone for reminder times and the body prefix."""
        # Straight from pydantic's private store: this is read for every message rendered.
        private = self.__pydantic_private__
        zone: tzinfo = private["_zone"] if private is not None else local_zone()
        return zone

    def template(self, name: str) -> Template | None:
        """The compiled template of ``from_address``, ``contact_hdr``, ``offline_message`` or
        ``content_type_hdr`` (None when unset)."""
        return self._templates.get(name)

    @property
    def lease_seconds(self) -> int:
        """How long a dumped or reminded message stays leased awaiting its reply.

        ``lease_time`` when set; else ``check_time``, but at least 32 s: RFC 3261 Timer F
        (64*T1), the longest a MESSAGE transaction waits for its final reply, so a reply that
        arrives in time always finds its lease.
        """
        if self.lease_time is not None:
            return self.lease_time
        return max(self.check_time, TRANSACTION_TIMEOUT)

    @property
    def notices_enabled(self) -> bool:
        """Whether stores may produce an offline notice."""
        return self.policy().notices_enabled

    @property
    def reminders_enabled(self) -> bool:
        """Whether the reminder sweep runs (``reminder`` set and ``send_time > 0``)."""
        return self.policy().reminders_enabled

    def policy(self) -> Policy:
        """The frozen :class:`~libmsilo.core.policy.Policy` the core decides with (built anew on
        each call, so a ``model_copy`` never carries a stale one)."""
        return Policy(
            zone=self.zone,
            templates=MappingProxyType(dict(self._templates)),
            reminder=self.reminder,
            outbound_proxy=self.outbound_proxy,
            expire_time=self.expire_time,
            lease_seconds=self.lease_seconds,
            purge_interval=self.check_time * self.clean_period,
            send_time=self.send_time,
            max_messages=self.max_messages,
            max_attempts=self.max_attempts,
            max_body_size=self.max_body_size,
            snd_time_avp=self.snd_time_avp,
            kamailio_columns=self.profile is Profile.KAMAILIO,
            extra_hdrs_avp=self.extra_hdrs_avp,
            keep_call_id=bool(self.use_mode & 1),
            use_contact=self.use_contact,
            add_date=self.add_date,
            add_contact=self.add_contact,
            notify_loop_guard=self.notify_loop_guard,
            dump_to_contact=self.profile is Profile.LIBMSILO,
        )

    def driver_options(self) -> DriverOptions:
        """Connection options for the driver: ``db_timeout``, ``db_pool_size`` and the Redis
        write waits."""
        return DriverOptions(
            timeout=self.db_timeout,
            pool_size=self.db_pool_size,
            wait_replicas=self.redis_wait_replicas,
            wait_timeout=self.redis_wait_timeout,
            wait_aof=self.redis_wait_aof,
        )

    def layout(self) -> StoreLayout:
        """Table and column names for the drivers."""
        return StoreLayout(
            table=self.db_table,
            mid=self.sc_mid,
            src_addr=self.sc_from,
            dst_addr=self.sc_to,
            username=self.sc_uri_user,
            domain=self.sc_uri_host,
            body=self.sc_body,
            ctype=self.sc_ctype,
            exp_time=self.sc_exp_time,
            inc_time=self.sc_inc_time,
            snd_time=self.sc_snd_time,
            extra_hdrs=self.sc_stored_hdrs,
            callid=self.sc_callid,
        )

    # ---- server configs ----------------------------------------------------------------------

    @classmethod
    def from_opensips_cfg(
        cls,
        text: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> MsiloSettings:
        """Settings from the ``modparam("msilo", …)`` lines of an ``opensips.cfg`` (``text``, or
        the file at ``path``; ``include_file``/``import_file`` are followed from ``path``)."""
        text = _cfg_text(text, path)
        text = preprocess(text, path=path, kamailio=False)
        return cls._from_cfg(text, Profile.OPENSIPS, overrides)

    @classmethod
    def from_kamailio_cfg(
        cls,
        text: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        defines: Defines = (),
        **overrides: Any,
    ) -> MsiloSettings:
        """Settings from the ``modparam("msilo", …)`` lines of a ``kamailio.cfg`` (``text``, or
        the file at ``path``), read after its preprocessor (``#!define``, ``#!ifdef``, …, see
        :mod:`libmsilo.cfgpp`); ``defines`` are pre-defined names as ``kamailio -A`` gives."""
        text = _cfg_text(text, path)
        text = preprocess(text, path=path, defines=defines, kamailio=True)
        return cls._from_cfg(text, Profile.KAMAILIO, overrides)

    @classmethod
    def _from_cfg(cls, text: str, profile: Profile, overrides: dict[str, Any]) -> MsiloSettings:
        known = set(cls.model_fields)
        values: dict[str, Any] = {"profile": profile}
        for name, value in read_modparams(text, "msilo", known):
            values[name] = value
        values.update(overrides)
        return cls(**values)


def _cfg_text(text: str | None, path: str | os.PathLike[str] | None) -> str:
    if text is not None:
        return text
    if path is None:
        raise SettingsError("give the config text or its path")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config {os.fspath(path)!r} cannot be read: {exc}") from None


def _address(value: str) -> NameAddr:
    """A SIP address setting, bare URI or name-addr; ``ValueError`` saying why not."""
    try:
        return parse_address(value)
    except InvalidURI as exc:
        raise ValueError(f"{value!r} is not a SIP address (URI or name-addr): {exc}") from None


def _env_file_names(env_file: Any) -> list[str]:
    """Variable names set in the ``.env`` file(s) pydantic-settings reads."""
    if env_file is None:
        return []
    paths = env_file if isinstance(env_file, list | tuple) else [env_file]
    names: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            name = line.strip().removeprefix("export ").partition("=")[0].strip()
            names.append(name)
    return names


def _warn_unknown_variables(known: set[str], env_file: Any) -> None:
    """Log each ``MSILO_*`` variable that names no setting, once per process."""
    prefix = len(_ENV_PREFIX)
    for name in [*os.environ, *_env_file_names(env_file)]:
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or upper.startswith("MSILO_TEST_"):
            continue
        if name[prefix:].lower() in known or name in _warned_names:
            continue
        _warned_names.add(name)
        log.warning("environment variable %s is not a libmsilo setting; ignored", name)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        # A model-level check has no location; its message names the settings it is about.
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
