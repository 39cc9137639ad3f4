"""BEHAVIOUR.md §1: settings — names, documented defaults, validation, profiles, server configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from libmsilo import MsiloSettings, Profile, SettingsError
from libmsilo.drivers.base import StoreLayout

DOCUMENTED = {
    "db_url": "sqlite:///msilo.db",
    "db_table": "silo",
    "from_address": None,
    "contact_hdr": None,
    "offline_message": None,
    "content_type_hdr": None,
    "reminder": None,
    "outbound_proxy": None,
    "expire_time": 259200,
    "check_time": 30,
    "send_time": 0,
    "clean_period": 5,
    "use_contact": True,
    "sc_mid": "mid",
    "sc_from": "src_addr",
    "sc_to": "dst_addr",
    "sc_uri_user": "username",
    "sc_uri_host": "domain",
    "sc_body": "body",
    "sc_ctype": "ctype",
    "sc_exp_time": "exp_time",
    "sc_inc_time": "inc_time",
    "sc_snd_time": "snd_time",
    "snd_time_avp": None,
    "add_date": True,
    "max_messages": 0,
    "profile": Profile.LIBMSILO,
    "max_body_size": 65536,
    "max_attempts": 0,
    "notify_loop_guard": True,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(__import__("os").environ):
        if name.startswith("MSILO_"):
            monkeypatch.delenv(name)


def test_documented_defaults() -> None:
    s = MsiloSettings()
    for name, value in DOCUMENTED.items():
        assert getattr(s, name) == value, name
    assert s.layout() == StoreLayout()
    assert not s.notices_enabled and not s.reminders_enabled


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSILO_EXPIRE_TIME", "60")
    monkeypatch.setenv("MSILO_USE_CONTACT", "0")
    (tmp_path / ".env").write_text("MSILO_DB_TABLE=inbox\nMSILO_ADD_DATE=false\n")
    s = MsiloSettings()
    assert (s.expire_time, s.use_contact, s.db_table, s.add_date) == (60, False, "inbox", False)


@pytest.mark.parametrize("flag", [0, 1, "0", "1", "true", "false"])
def test_booleans_accept_module_style_values(flag: object) -> None:
    assert MsiloSettings(add_date=flag).add_date is (str(flag) in ("1", "true"))


@pytest.mark.parametrize("name", ["add_date", "use_contact", "add_contact"])
@pytest.mark.parametrize(("flag", "on"), [(2, True), (-1, True), ("7", True), ("00", False)])
def test_c_module_flags_are_on_when_non_zero(name: str, flag: object, on: bool) -> None:
    assert getattr(MsiloSettings(**{name: flag}), name) is on
    cfg = f'modparam("msilo", "{name}", {flag})'
    assert getattr(MsiloSettings.from_kamailio_cfg(cfg), name) is on


@pytest.mark.parametrize("value", [-1, -100, "-5"])
def test_negative_max_messages_means_no_limit(value: object) -> None:
    assert MsiloSettings(max_messages=value).max_messages == 0
    cfg = f'modparam("msilo", "max_messages", {value})'
    assert MsiloSettings.from_opensips_cfg(cfg).max_messages == 0


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"expire_time": 0}, "expire_time"),
        ({"check_time": 0}, "check_time"),
        ({"check_time": -1}, "check_time"),
        ({"clean_period": 0}, "clean_period"),
        ({"send_time": -1}, "send_time"),
        ({"sc_mid": "id; DROP TABLE silo"}, "sc_mid"),
        ({"sc_body": "1body"}, "sc_body"),
        ({"db_table": "silo-x"}, "db_table"),
        ({"sc_from": "a" * 64}, "sc_from"),
        ({"sc_to": "src_addr"}, "sc_"),
        ({"offline_message": "offline"}, "content_type_hdr"),
        ({"from_address": "sip:$nope@x"}, "from_address"),
        ({"contact_hdr": "Contact: $hdr(X"}, "contact_hdr"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"snd_time_avp": "$avp(x"}, "snd_time_avp"),
        ({"profile": "asterisk"}, "profile"),
        ({"no_such_parameter": 1}, "no_such_parameter"),
    ],
)
def test_invalid_settings_name_the_parameter(values: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        MsiloSettings(**values)


def test_templates_compiled_once() -> None:
    s = MsiloSettings(
        from_address="sip:msilo@$fd",
        offline_message="$tU is offline",
        content_type_hdr="Content-Type: text/plain\r\n",
    )
    assert s.notices_enabled
    t = s.template("offline_message")
    assert t is not None and t is s.template("offline_message")
    assert s.template("contact_hdr") is None


def test_snd_time_avp_forms() -> None:
    assert MsiloSettings(snd_time_avp="$avp(snd_time)").snd_time_avp == "snd_time"
    assert MsiloSettings(snd_time_avp="snd_time").snd_time_avp == "snd_time"


@pytest.mark.parametrize("profile", ["opensips", "kamailio"])
def test_profiles_preset_the_real_defaults(profile: str) -> None:
    s = MsiloSettings(profile=profile)
    assert (s.sc_mid, s.check_time, s.clean_period) == ("id", 60, 10)
    assert s.add_contact is (profile == "opensips")
    explicit = MsiloSettings(profile=profile, check_time=5, sc_mid="mid")
    assert (explicit.check_time, explicit.sc_mid) == (5, "mid")


def test_reminders_enabled_needs_both() -> None:
    assert not MsiloSettings(reminder="sip:r@x").reminders_enabled
    assert not MsiloSettings(send_time=10).reminders_enabled
    assert MsiloSettings(reminder="sip:r@x", send_time=10).reminders_enabled


OPENSIPS_CFG = r"""
loadmodule "msilo.so"
# comment: modparam("msilo", "expire_time", 1)
modparam("msilo", "db_url", "mysql://opensips:opensipsrw@localhost/opensips")
modparam("msilo","from_address","sip:registrar@example.net")
modparam("msilo", "contact_hdr", "Contact: <sip:registrar@example.net;msilo=yes>\r\n")
modparam("msilo", "content_type_hdr", "Content-Type: text/plain\r\n")
modparam("msilo", "offline_message", "*** User $rU is offline!")
modparam("msilo", "reminder", "sip:reminder@example.net")
modparam("msilo", "send_time", 60)
modparam("msilo", "expire_time", 36000)   // ten hours
/* modparam("msilo", "max_messages", 3) */
modparam("msilo", "snd_time_avp", "$avp(snd_time)")
modparam("msilo", "extra_hdrs", "X-Foo: bar\r\n")
modparam("usrloc", "db_mode", 2)
"""


def test_from_opensips_cfg() -> None:
    s = MsiloSettings.from_opensips_cfg(OPENSIPS_CFG)
    assert s.profile is Profile.OPENSIPS
    assert s.db_url == "mysql://opensips:opensipsrw@localhost/opensips"
    assert s.contact_hdr == "Contact: <sip:registrar@example.net;msilo=yes>\r\n"
    assert s.offline_message == "*** User $rU is offline!"
    assert (s.send_time, s.expire_time, s.max_messages) == (60, 36000, 0)
    assert s.snd_time_avp == "snd_time"
    assert s.sc_mid == "id" and s.check_time == 60
    assert s.reminders_enabled and s.notices_enabled


def test_from_kamailio_cfg_with_override() -> None:
    cfg = 'modparam("msilo", "add_contact", 1)\nmodparam("msilo|tm", "check_time", 20)\n'
    s = MsiloSettings.from_kamailio_cfg(cfg, db_url="sqlite:///x.db")
    assert s.profile is Profile.KAMAILIO
    assert (s.add_contact, s.check_time, s.db_url) == (True, 20, "sqlite:///x.db")


def test_bad_cfg_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="line 2"):
        MsiloSettings.from_opensips_cfg('\nmodparam("msilo", "expire_time" 5)')
    with pytest.raises(SettingsError, match="expire_time"):
        MsiloSettings.from_opensips_cfg('modparam("msilo", "expire_time", 0)')


# ---- issue 9.1: variables that are not libmsilo's


def test_unrelated_dotenv_and_environment_are_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgres://app@db/app\nMSILO_EXPIRE_TIME=90\n")
    monkeypatch.setenv("SECRET_KEY", "x")
    s = MsiloSettings()
    assert s.expire_time == 90


def test_unknown_msilo_variable_is_warned_once_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MSILO_EXPIRE_TIM", "60")  # a typo
    (tmp_path / ".env").write_text("MSILO_FROM_ADRESS=sip:a@b\n")
    with caplog.at_level("WARNING", logger="libmsilo"):
        first = MsiloSettings()
        MsiloSettings()
    assert first.expire_time == 259200
    for name in ("MSILO_EXPIRE_TIM", "MSILO_FROM_ADRESS"):
        assert sum(name in r.getMessage() for r in caplog.records) == 1, name


def test_silo_and_cli_start_beside_an_unrelated_dotenv(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from libmsilo import Silo
    from libmsilo.cli import app

    (tmp_path / ".env").write_text("DATABASE_URL=mysql://x@y/z\nMSILO_DB_URL=memory://\n")
    with Silo.from_settings() as silo:
        assert silo.settings.db_url == "memory://"
    result = CliRunner().invoke(app, ["inbox", "sip:alice@example.com"])
    assert result.exit_code == 0, result.output


def test_unknown_keyword_argument_still_raises() -> None:
    with pytest.raises(SettingsError, match="db_ulr"):
        MsiloSettings(db_ulr="memory://")
