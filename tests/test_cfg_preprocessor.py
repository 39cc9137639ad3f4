"""Issue 9.6: Kamailio configs read after their preprocessor, includes followed.

The config below is laid out like Kamailio's stock ``kamailio.cfg`` (feature switches, a
database URL defined per branch, ``#!substdef`` for the domain), written for these tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from libmsilo import MsiloSettings, SettingsError
from libmsilo.cfgpp import preprocess
from libmsilo.cli import app

STOCK_LIKE = r"""#!KAMAILIO
#
# Kamailio SIP server - msilo enabled with WITH_MSILO
#
# *** To enable MySQL:
#     - define WITH_MYSQL
#!define WITH_MYSQL
##!define WITH_DEBUG

#!ifdef WITH_MYSQL
# - database URL - used to connect to database server by modules such
#   as: auth_db, acc, usrloc, a.s.o.
#!trydef DBURL "mysql://kamailio:kamailiorw@localhost/kamailio"
#!else
#!trydef DBURL "postgres://wrong@localhost/wrong"
#!endif

#!ifndef MSILO_EXPIRE
#!define MSILO_EXPIRE 7200
#!endif

#!substdef "!MY_DOMAIN!example.org!g"

loadmodule "msilo.so"

#!ifdef WITH_MSILO
modparam("msilo", "db_url", DBURL)
modparam("msilo", "from_address", "sip:registrar@MY_DOMAIN")
modparam("msilo", "offline_message", "DBURL stays a word inside a string")
modparam("msilo", "content_type_hdr", "Content-Type: text/plain\r\n")
modparam("msilo", "expire_time", MSILO_EXPIRE)
#!ifdef WITH_DEBUG
modparam("msilo", "check_time", 1)
#!else
modparam("msilo", "check_time", 45)
#!endif
#!else
modparam("msilo", "expire_time", 1)
#!endif
"""


def test_defines_and_branches_as_kamailio_reads_them() -> None:
    s = MsiloSettings.from_kamailio_cfg(STOCK_LIKE, defines=["WITH_MSILO"])
    assert s.db_url == "mysql://kamailio:kamailiorw@localhost/kamailio"
    assert s.from_address == "sip:registrar@example.org"
    assert s.offline_message == "DBURL stays a word inside a string"
    assert (s.expire_time, s.check_time) == (7200, 45)


def test_the_other_branch_without_the_switch() -> None:
    s = MsiloSettings.from_kamailio_cfg(STOCK_LIKE)
    assert s.expire_time == 1  # WITH_MSILO not defined: only the #!else line counts
    assert s.from_address is None


def test_pre_defined_values_win_over_trydef_and_ifndef() -> None:
    s = MsiloSettings.from_kamailio_cfg(
        STOCK_LIKE,
        defines=["WITH_MSILO", "WITH_DEBUG", 'DBURL="postgresql://k@db/k"', "MSILO_EXPIRE=60"],
    )
    assert (s.db_url, s.expire_time, s.check_time) == ("postgresql://k@db/k", 60, 1)
    mapped = MsiloSettings.from_kamailio_cfg(STOCK_LIKE, defines={"WITH_MSILO": None})
    assert mapped.check_time == 45


def test_define_redefine_and_alternative_prefix() -> None:
    cfg = (
        '!!define DBURL "sqlite:///first.db"\n'
        '#!redefine DBURL "sqlite:///second.db"\n'
        "#!define N 30\n#!define CHECK N\n"
        'modparam("msilo", "db_url", DBURL)\nmodparam("msilo", "check_time", CHECK)\n'
    )
    s = MsiloSettings.from_kamailio_cfg(cfg)
    assert (s.db_url, s.check_time) == ("sqlite:///second.db", 30)
    with pytest.raises(SettingsError, match="line 2: DBURL is already defined"):
        MsiloSettings.from_kamailio_cfg('#!define DBURL "a"\n#!define DBURL "b"\n')


def test_multi_line_define() -> None:
    cfg = '#!define MSG "line one " \\\n  "and two"\nmodparam("msilo", "offline_message", MSG)\n'
    s = MsiloSettings.from_kamailio_cfg(cfg, content_type_hdr="Content-Type: text/plain\r\n")
    assert s.offline_message == "line one and two"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ("#!ifexp KAMAILIO_VERSION >= 050400\n#!endif\n", "line 1: #!ifexp"),
        ('#!defexp X "a" + "b"\n', "line 1: #!defexp"),
        ("#!ifdef A\n", "without #!endif"),
        ("#!endif\n", "line 1: #!endif without"),
        ("#!ifdef A\n#!else\n#!else\n#!endif\n", "line 3: #!else without"),
        ("#!define 9X 1\n", "needs a name"),
        ('#!substdef "!A!b!x"\n', "flags"),
        ('#!define A B\n#!define B A\nmodparam("msilo", "db_url", A)\n', "expands into"),
    ],
)
def test_unsupported_or_broken_directives_are_refused(cfg: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        MsiloSettings.from_kamailio_cfg(cfg)


def test_expressions_in_a_skipped_branch_are_not_evaluated() -> None:
    cfg = "#!ifdef NOPE\n#!ifexp 1\n#!defexp X 1\n#!endif\n#!endif\n"
    cfg += 'modparam("msilo", "check_time", 9)\n'
    assert MsiloSettings.from_kamailio_cfg(cfg).check_time == 9


def test_include_file_is_relative_to_the_including_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "kamailio"
    (conf / "parts").mkdir(parents=True)
    (conf / "kamailio.cfg").write_text(
        "#!define WITH_MSILO\n"
        'include_file "parts/msilo.cfg"\n'
        'import_file "kamailio-local.cfg"\n'  # optional, absent
        '#!include_file "parts/db.cfg"\n'
        'modparam("msilo", "db_url", DBURL)\n'
    )
    (conf / "parts" / "msilo.cfg").write_text(
        '#!ifdef WITH_MSILO\nmodparam("msilo", "send_time", 60)\n#!endif\n'
        'import_file "more.cfg"\n'  # relative to parts/
    )
    (conf / "parts" / "more.cfg").write_text('modparam("msilo", "reminder", "sip:r@example.org")')
    (conf / "parts" / "db.cfg").write_text('#!define DBURL "mysql://k@db/k"\n')
    monkeypatch.chdir(tmp_path)  # not the config's directory
    s = MsiloSettings.from_kamailio_cfg(path=conf / "kamailio.cfg")
    assert (s.send_time, s.reminder, s.db_url) == (60, "sip:r@example.org", "mysql://k@db/k")


def test_missing_include_is_refused_naming_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text('modparam("msilo", "send_time", 60)\ninclude_file "msilo-local.cfg"\n')
    with pytest.raises(SettingsError, match=r"line 2: include_file 'msilo-local.cfg' not found"):
        MsiloSettings.from_kamailio_cfg(path=cfg)
    with pytest.raises(SettingsError, match="not found"):
        MsiloSettings.from_opensips_cfg(path=cfg)


def test_include_loops_stop(tmp_path: Path) -> None:
    cfg = tmp_path / "loop.cfg"
    cfg.write_text('include_file "loop.cfg"\n')
    with pytest.raises(SettingsError, match="nested deeper than 10"):
        preprocess(cfg.read_text(), path=cfg, kamailio=True)


def test_opensips_include_file_and_comment_lines(tmp_path: Path) -> None:
    (tmp_path / "msilo.cfg").write_text('modparam("msilo", "expire_time", 600)\n')
    main = tmp_path / "opensips.cfg"
    main.write_text('#!define X 1\ninclude_file "msilo.cfg"\n')
    assert MsiloSettings.from_opensips_cfg(path=main).expire_time == 600


def test_cli_config_takes_kamailio_defines(tmp_path: Path) -> None:
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(STOCK_LIKE)
    result = CliRunner().invoke(
        app,
        ["config", "--kamailio", str(cfg), "-A", "WITH_MSILO", "-A", "MSILO_EXPIRE=90", "--json"],
    )
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    assert (values["expire_time"], values["from_address"]) == (90, "sip:registrar@example.org")


def test_directives_inside_block_comments_are_comments() -> None:
    cfg = (
        '#!define DBURL "mysql://k@db/k"\n'
        "/* old settings:\n"
        '#!redefine DBURL "sqlite:///old.db"\n'
        "#!ifdef NOPE\n"
        "*/\n"
        'modparam("msilo", "db_url", DBURL) /* "#!" here */ // and here\n'
    )
    assert MsiloSettings.from_kamailio_cfg(cfg).db_url == "mysql://k@db/k"
