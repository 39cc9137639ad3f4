"""Unit tests of libmsilo.uri: RFC 3261/3966 examples and hand-written torture cases."""

from __future__ import annotations

from typing import Any, cast

import pytest

from libmsilo.errors import InvalidRequest, InvalidURI
from libmsilo.uri import (
    MAX_ADDRESS_LENGTH,
    MAX_URI_LENGTH,
    URI,
    NameAddr,
    aor,
    parse_contact_list,
    parse_name_addr,
    parse_uri,
)

# ---- RFC 3261 §19.1.3: the example SIP and SIPS URIs -----------------------------------------

RFC3261_EXAMPLES = [
    ("sip:alice@atlanta.com", URI("sip", "alice", None, "atlanta.com", None)),
    (
        "sip:alice:secretword@atlanta.com;transport=tcp",
        URI("sip", "alice", "secretword", "atlanta.com", None, (("transport", "tcp"),)),
    ),
    (
        "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
        URI(
            "sips",
            "alice",
            None,
            "atlanta.com",
            None,
            (),
            (("subject", "project%20x"), ("priority", "urgent")),
        ),
    ),
    (
        # telephone-subscriber as the user, with a password ("1234")
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        URI("sip", "+1-212-555-1212", "1234", "gateway.com", None, (("user", "phone"),)),
    ),
    ("sips:1212@gateway.com", URI("sips", "1212", None, "gateway.com", None)),
    ("sip:alice@192.0.2.4", URI("sip", "alice", None, "192.0.2.4", None)),
    (
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
        URI(
            "sip",
            None,
            None,
            "atlanta.com",
            None,
            (("method", "REGISTER"),),
            (("to", "alice%40atlanta.com"),),
        ),
    ),
    (
        "sip:alice;day=tuesday@atlanta.com",
        URI("sip", "alice;day=tuesday", None, "atlanta.com", None),
    ),
]


@pytest.mark.parametrize(("text", "expected"), RFC3261_EXAMPLES)
def test_rfc3261_examples_parse_into_their_parts(text: str, expected: URI) -> None:
    uri = parse_uri(text)
    assert uri == expected
    assert str(uri) == text  # each example is already in the form str() writes


# ---- RFC 3261 §19.1.4: comparison -------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
         "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
        ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
         "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ],
)  # fmt: skip
def test_equivalent_uris_have_the_same_aor(left: str, right: str) -> None:
    assert aor(parse_uri(left)) == aor(parse_uri(right))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        # user parts compare case-sensitively
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob2@biloxi.com"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.org"),
        # an escaped "@" is part of the user, not a delimiter
        ("sip:a%40b@x.com", "sip:a@x.com"),
        ("sip:a%40b@x.com", "sip:a%2540b@x.com"),
    ],
)
def test_different_users_or_hosts_have_different_aors(left: str, right: str) -> None:
    assert aor(parse_uri(left)) != aor(parse_uri(right))


def test_aor_ignores_port_scheme_params_and_headers() -> None:
    a = parse_uri("sip:bob@Biloxi.com:5060;transport=udp?subject=x")
    b = parse_uri("sips:bob@biloxi.COM")
    assert aor(a) == aor(b) == ("bob", "biloxi.com")


@pytest.mark.parametrize(
    ("user", "key"),
    [
        ("alice", "alice"),
        ("%61lice", "alice"),  # unreserved: decoded
        ("%41lice", "Alice"),  # decoding keeps the case of the character itself
        ("a%2fb", "a/b"),  # user-unreserved "/": decoded
        ("a%3bb%3Fc", "a;b?c"),  # ";" and "?" may appear unescaped in a user part
        ("a%40b", "a%40b"),  # "@" must stay escaped
        ("a%3ab", "a%3Ab"),  # ":" too; hex upper-cased
        ("j%c3%b6rg", "j%C3%B6rg"),  # non-ASCII stays escaped, upper-case hex
        ("a%20b", "a%20b"),
        ("%25", "%25"),  # an escaped "%" stays escaped
    ],
)
def test_user_key_decodes_only_what_may_appear_unescaped(user: str, key: str) -> None:
    uri = parse_uri(f"sip:{user}@example.com")
    assert uri.user == user  # kept as written
    assert uri.user_key == key


def test_user_key_is_empty_without_user_and_host_key_lowercases() -> None:
    uri = parse_uri("sip:Example.COM")
    assert uri.user is None
    assert uri.user_key == ""
    assert uri.host_key == "example.com"
    assert parse_uri("sip:x@[2001:DB8::A]").host_key == "[2001:db8::a]"


def test_user_key_of_hand_built_uri_keeps_broken_escapes() -> None:
    assert URI("sip", "a%4", None, "h", None).user_key == "a%4"
    assert URI("sip", "%zz%41", None, "h", None).user_key == "%zzA"


# ---- TEL URIs (RFC 3966) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "user", "user_key", "host_key", "params"),
    [
        ("tel:+1-201-555-0123", "+1-201-555-0123", "+12015550123", "", ()),
        ("tel:+1(201)555.0123", "+1(201)555.0123", "+12015550123", "", ()),
        ("tel:7042;phone-context=Example.COM", "7042", "7042", "example.com",
         (("phone-context", "Example.COM"),)),
        ("tel:863-1234;phone-context=+1-914-555", "863-1234", "8631234", "+1-914-555",
         (("phone-context", "+1-914-555"),)),
        ("TEL:+1-201-555-0123;ext=1234;isub=12", "+1-201-555-0123", "+12015550123", "",
         (("ext", "1234"), ("isub", "12"))),
        ("tel:*21#;phone-context=example.net", "*21#", "*21#", "example.net",
         (("phone-context", "example.net"),)),
        ("tel:0a1B;phone-context=x.org", "0a1B", "0A1B", "x.org", (("phone-context", "x.org"),)),
        ("tel:5555", "5555", "5555", "", ()),  # deviation: no phone-context required
    ],
)  # fmt: skip
def test_tel_uris(
    text: str,
    user: str,
    user_key: str,
    host_key: str,
    params: tuple[tuple[str, str | None], ...],
) -> None:
    uri = parse_uri(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("tel", user, None, "", None)
    assert uri.params == params
    assert (uri.user_key, uri.host_key) == (user_key, host_key)
    assert aor(uri) == (user_key, host_key)
    assert parse_uri(str(uri)) == uri
    assert uri.aor_string == f"tel:{user}"


@pytest.mark.parametrize(
    "text",
    [
        "tel:",
        "tel:+",
        "tel:+--",
        "tel:--",
        "tel:+1 201",
        "tel:+1x",
        "tel:+12?x=y",
        "tel:12@example.com",
        "tel:12;a_b=1",  # pname = 1*( alphanum / "-" )
        "tel:12;=1",
        "tel:12;a=",
        "tel:;phone-context=x",
    ],
)
def test_invalid_tel_uris(text: str) -> None:
    with pytest.raises(InvalidURI):
        parse_uri(text)


# ---- hosts, ports, parameters and headers -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:bob@[2001:db8::1]", "[2001:db8::1]", None),
        ("sip:bob@[2001:db8::1]:5070", "[2001:db8::1]", 5070),
        ("sip:[::1]", "[::1]", None),
        ("sip:[::]:5060", "[::]", 5060),
        ("sip:bob@[2001:db8:0:0:0:0:0:1]", "[2001:db8:0:0:0:0:0:1]", None),
        ("sip:bob@[::ffff:192.0.2.1]:5061", "[::ffff:192.0.2.1]", 5061),
        ("sip:bob@[1:2:3:4:5:6:192.0.2.1]", "[1:2:3:4:5:6:192.0.2.1]", None),
        ("sip:bob@[::192.0.2.1]", "[::192.0.2.1]", None),
        ("sip:bob@192.0.2.1:1", "192.0.2.1", 1),
        ("sip:bob@255.255.255.255:65535", "255.255.255.255", 65535),
        ("sip:bob@example.com.", "example.com.", None),  # hostname may end with "."
        ("sip:bob@a-b--c.x1-2.example", "a-b--c.x1-2.example", None),
        ("sip:bob@123.example.com", "123.example.com", None),
        ("sip:bob@localhost:05060", "localhost", 5060),
    ],
)
def test_hosts_and_ports(text: str, host: str, port: int | None) -> None:
    uri = parse_uri(text)
    assert (uri.host, uri.port) == (host, port)
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    [
        "sip:bob@[2001:db8::1",  # unterminated reference
        "sip:bob@2001:db8::1",  # IPv6 without brackets
        "sip:bob@[2001:db8::1::2]",  # two "::"
        "sip:bob@[1:2:3:4:5:6:7:8:9]",
        "sip:bob@[1:2:3:4:5:6:7]",  # too few groups, no "::"
        "sip:bob@[1:2:3:4:5:6:7::8]",  # "::" must stand for at least one group
        "sip:bob@[12345::1]",
        "sip:bob@[::g]",
        "sip:bob@[fe80::1%25eth0]",  # zone ids are not part of RFC 3261
        "sip:bob@[::1.2.3]",
        "sip:bob@[1:2:3:4:5:6:7:1.2.3.4]",
        "sip:bob@[::1]x",
        "sip:bob@[::1]:",
        "sip:bob@256.1.1.1",
        "sip:bob@1.2.3",
        "sip:bob@1.2.3.4.",
        "sip:bob@1.2.3.4567",
        "sip:bob@-example.com",
        "sip:bob@example-.com",
        "sip:bob@example..com",
        "sip:bob@.example.com",
        "sip:bob@example.1com",  # toplabel starts with a letter
        "sip:bob@my_host",
        "sip:bob@host:0",
        "sip:bob@host:65536",
        "sip:bob@host:123456",
        "sip:bob@host:",
        "sip:bob@host:50x",
        "sip:bob@host:-1",
        "sip:bob@",
        "sip:bob@:5060",
        "sip:bob@;lr",
        "sip:",
    ],
)
def test_invalid_hosts_and_ports(text: str) -> None:
    with pytest.raises(InvalidURI):
        parse_uri(text)


def test_params_keep_order_case_and_valueless_ones() -> None:
    uri = parse_uri("sip:bob@example.com;LR;Transport=TCP;maddr=[2001:db8::9];x=%41")
    assert uri.params == (
        ("LR", None),
        ("Transport", "TCP"),
        ("maddr", "[2001:db8::9]"),
        ("x", "%41"),
    )
    assert uri.param("lr") == ""
    assert uri.param("transport") == "TCP"
    assert uri.param("TRANSPORT") == "TCP"
    assert uri.param("ttl") is None
    assert uri.has_param("Lr")
    assert not uri.has_param("ttl")
    assert uri.has_param("transport")


def test_first_of_repeated_params_wins() -> None:
    uri = parse_uri("sip:h.example;a=1;A=2")
    assert uri.param("a") == "1"


def test_headers_split_at_ampersand_and_keep_empty_values() -> None:
    uri = parse_uri("sip:h.example?Subject=&call-id=1%402&x=a?b:c")
    assert uri.headers == (("Subject", ""), ("call-id", "1%402"), ("x", "a?b:c"))
    assert str(uri) == "sip:h.example?Subject=&call-id=1%402&x=a?b:c"


@pytest.mark.parametrize(
    "text",
    [
        "sip:a@b;=x",
        "sip:a@b;x=",
        "sip:a@b;x=1=2",
        "sip:a@b;;x",
        "sip:a@b;",
        "sip:a@b;x y",
        "sip:a@b;x@y",
        "sip:a@b?",
        "sip:a@b?x",
        "sip:a@b?=x",
        "sip:a@b?x=1&",
        "sip:a@b?x=1=2",
        "sip:a@b?x=<y>",
    ],
)
def test_invalid_params_and_headers(text: str) -> None:
    with pytest.raises(InvalidURI):
        parse_uri(text)


def test_scheme_is_case_insensitive_and_lowered() -> None:
    for text in ("SIP:a@b.c", "Sip:a@b.c", "sIp:a@b.c"):
        assert parse_uri(text).scheme == "sip"
    assert parse_uri("SIPS:a@b.c").scheme == "sips"
    assert str(parse_uri("SiP:a@b.c")) == "sip:a@b.c"


@pytest.mark.parametrize(
    ("text", "user", "password"),
    [
        ("sip:a%20b@h.example", "a%20b", None),
        ("sip:-_.!~*'()&=+$,;?/@h.example", "-_.!~*'()&=+$,;?/", None),
        ("sip:u:-_.!~*'()&=+$,%41@h.example", "u", "-_.!~*'()&=+$,%41"),
        ("sip:u:@h.example", "u", ""),  # password = *( ... ): may be empty
        ("sip:u?x@h.example?y=1", "u?x", None),
    ],
)
def test_user_and_password_characters(text: str, user: str, password: str | None) -> None:
    uri = parse_uri(text)
    assert (uri.user, uri.password) == (user, password)
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("sip:@h.example", 4),  # empty user
        ("sip:a b@h.example", 5),
        ("sip:a%4@h.example", 5),  # "%" not followed by two hex digits
        ("sip:a%zz@h.example", 5),
        ("sip:a:b:c@h.example", 7),  # ":" is not a password character
        ("sip:a:b@c@h.example", 9),  # a second "@"
        ("sip:a@exa_mple.com", 9),
        ("http://example.com", 0),  # unsupported scheme
        ("mailto:a@b.c", 0),
        (":a@b.c", 0),
        ("sipa@b.c", 0),
        ("sip:a@b.c;x=1 2", 13),
    ],
)
def test_errors_report_the_offending_position(text: str, position: int) -> None:
    with pytest.raises(InvalidURI) as caught:
        parse_uri(text)
    assert caught.value.position == position
    assert caught.value.text == text
    assert isinstance(caught.value, InvalidRequest)


@pytest.mark.parametrize("control", ["\x00", "\r", "\n", "\r\n", "\t", "\x1b", "\x7f", " "])
@pytest.mark.parametrize("where", [3, 4, 6, 10, 17, 22, 27])
def test_control_characters_and_spaces_are_refused_anywhere(control: str, where: int) -> None:
    text = "sip:bob@biloxi.com;lr?x=y"
    assert parse_uri(text)  # valid without the insertion
    with pytest.raises(InvalidURI):
        parse_uri(text[:where] + control + text[where:])


def test_size_limit() -> None:
    longest = "sip:" + "a" * (MAX_URI_LENGTH - len("sip:@h")) + "@h"
    assert len(longest) == MAX_URI_LENGTH
    assert parse_uri(longest).user == "a" * (MAX_URI_LENGTH - 6)
    with pytest.raises(InvalidURI, match="longer than"):
        parse_uri(longest + "x")
    with pytest.raises(InvalidURI, match="longer than"):
        parse_name_addr("<" + longest + ">" + ";x" * MAX_ADDRESS_LENGTH)
    with pytest.raises(InvalidURI, match="longer than"):
        parse_contact_list("<sip:a@b>," * (MAX_ADDRESS_LENGTH // 10 + 1))


def test_non_str_input_raises_invalid_uri() -> None:
    for value in (None, b"sip:a@b", 5):
        with pytest.raises(InvalidURI):
            parse_uri(cast(Any, value))
        with pytest.raises(InvalidURI):
            parse_name_addr(cast(Any, value))
        with pytest.raises(InvalidURI):
            parse_contact_list(cast(Any, value))


def test_str_subclass_is_accepted() -> None:
    class Text(str):
        pass

    assert parse_uri(Text("sip:a@b.c")) == parse_uri("sip:a@b.c")
    assert parse_name_addr(Text("<sip:a@b.c>")).uri.host == "b.c"


def test_aor_string() -> None:
    assert parse_uri("sips:Bob@Biloxi.com:5061;transport=tls?x=y").aor_string == (
        "sips:Bob@Biloxi.com"
    )
    assert parse_uri("sip:biloxi.com:5060").aor_string == "sip:biloxi.com"


def test_uri_is_frozen_and_hashable() -> None:
    uri = parse_uri("sip:a@b.c;lr")
    with pytest.raises(AttributeError):
        uri.user = "x"  # type: ignore[misc]
    assert {uri: 1}[parse_uri("sip:a@b.c;lr")] == 1
    assert uri == URI("sip", "a", None, "b.c", None, (("lr", None),))


# ---- name-addr --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "display", "uri", "params"),
    [
        # RFC 3261 §24.2 and §20 header examples
        ("Alice <sip:alice@atlanta.com>;tag=1928301774", "Alice", "sip:alice@atlanta.com",
         (("tag", "1928301774"),)),
        ("Bob <sip:bob@biloxi.com>", "Bob", "sip:bob@biloxi.com", ()),
        ('"Bob" <sips:bob@biloxi.com> ;tag=a48s', "Bob", "sips:bob@biloxi.com",
         (("tag", "a48s"),)),
        ("sip:+12125551212@phone2net.com;tag=887s", None, "sip:+12125551212@phone2net.com",
         (("tag", "887s"),)),
        ("Anonymous <sip:c8oqz84zk7z@privacy.org>;tag=hyh8", "Anonymous",
         "sip:c8oqz84zk7z@privacy.org", (("tag", "hyh8"),)),
        ('"A. G. Bell" <sip:agb@bell-telephone.com> ;tag=a48s', "A. G. Bell",
         "sip:agb@bell-telephone.com", (("tag", "a48s"),)),
        ("The Operator <sip:operator@cs.columbia.edu>;tag=287447", "The Operator",
         "sip:operator@cs.columbia.edu", (("tag", "287447"),)),
        ("<sip:alice@pc33.atlanta.com>", None, "sip:alice@pc33.atlanta.com", ()),
        ('"Mr. Watson" <sip:watson@worcester.bell-telephone.com>;q=0.7; expires=3600',
         "Mr. Watson", "sip:watson@worcester.bell-telephone.com",
         (("q", "0.7"), ("expires", "3600"))),
        # RFC 3428 §4: addr-spec From and To
        ("sip:user1@domain.com;tag=49583", None, "sip:user1@domain.com", (("tag", "49583"),)),
        ("sip:user2@domain.com", None, "sip:user2@domain.com", ()),
    ],
)  # fmt: skip
def test_rfc_name_addr_examples(
    text: str, display: str | None, uri: str, params: tuple[tuple[str, str | None], ...]
) -> None:
    value = parse_name_addr(text)
    assert value.display_name == display
    assert value.uri == parse_uri(uri)
    assert value.params == params
    assert parse_name_addr(str(value)) == value


def test_uri_params_inside_brackets_header_params_outside() -> None:
    value = parse_name_addr("<sip:bob@b.example;transport=tcp;lr>;tag=x;expires=60;msilo")
    assert value.uri.params == (("transport", "tcp"), ("lr", None))
    assert value.params == (("tag", "x"), ("expires", "60"), ("msilo", None))
    assert value.tag == "x"
    assert value.param("EXPIRES") == "60"
    assert value.param("msilo") == ""
    assert value.param("q") is None


def test_addr_spec_params_are_header_params() -> None:
    # RFC 3261 §20.10: without <>, ";..." after the URI belongs to the header field.
    value = parse_name_addr("sip:bob@b.example;transport=tcp;tag=1")
    assert value.uri == URI("sip", "bob", None, "b.example", None)
    assert value.params == (("transport", "tcp"), ("tag", "1"))


def test_quoted_display_name_escapes_are_resolved() -> None:
    value = parse_name_addr(r'"J Rosenberg \\\"" <sip:jdrosen@example.com>;tag=98asjd8')
    assert value.display_name == 'J Rosenberg \\"'
    assert parse_name_addr(str(value)) == value
    assert parse_name_addr(r'"a\b" <sip:a@b.c>').display_name == "ab"  # quoted-pair "\b" is "b"
    assert parse_name_addr('"" <sip:a@b.c>').display_name == ""
    assert parse_name_addr('"<sip:x@y>, ;" <sip:a@b.c>').display_name == "<sip:x@y>, ;"
    assert parse_name_addr('"Jörg\tMüller" <sip:a@b.c>').display_name == "Jörg\tMüller"


def test_quoted_strings_with_escapes_anywhere() -> None:
    value = parse_name_addr(r'<sip:a@b.c>;x="a\"b"')
    assert value.params == (("x", r'"a\"b"'),)
    assert parse_name_addr('"' + "\\a" * 2000 + '" <sip:a@b.c>').display_name == "a" * 2000
    for text in ('"\\', '"ab\\"', '<sip:a@b.c>;x="a\\"', '"a\\\x00" <sip:a@b.c>'):
        with pytest.raises(InvalidURI):
            parse_name_addr(text)


def test_token_display_names_are_joined_by_single_spaces() -> None:
    value = parse_name_addr("  Bob \t  Q.   Smith   <sip:bob@b.example>")
    assert value.display_name == "Bob Q. Smith"
    assert parse_name_addr("Bob<sip:bob@b.example>").display_name == "Bob"  # deviation: no LWS
    assert parse_name_addr("Jörg Müller <sip:j@b.example>").display_name == "Jörg Müller"


def test_odd_whitespace_around_delimiters() -> None:
    # In the spirit of RFC 4475 §3.1.1.1 (wsinv): LWS around <, >, ;, = and inside <>.
    value = parse_name_addr(' \t"Alice"\t<  sip:alice@a.example \t>  ;  tag \t=  x1 ;\tlr  ')
    assert value.display_name == "Alice"
    assert value.uri == parse_uri("sip:alice@a.example")
    assert value.params == (("tag", "x1"), ("lr", None))
    value = parse_name_addr("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert value.uri.host == "chair-dnrc.example.com"
    assert value.tag == "1918181833n"


def test_header_param_values_kept_as_written() -> None:
    value = parse_name_addr(
        '<sip:a@b.c>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
        ';methods="INVITE, MESSAGE";received=[2001:db8::2];reg-id=1;q=0.5'
    )
    assert value.params == (
        ("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'),
        ("methods", '"INVITE, MESSAGE"'),
        ("received", "[2001:db8::2]"),
        ("reg-id", "1"),
        ("q", "0.5"),
    )
    assert parse_name_addr(str(value)) == value


def test_tel_name_addr() -> None:
    value = parse_name_addr("<tel:+1-201-555-0123;phone-context=x.org>;tag=7")
    assert value.uri.scheme == "tel"
    assert value.uri.params == (("phone-context", "x.org"),)
    assert value.tag == "7"
    bare = parse_name_addr("tel:+1-201-555-0123;tag=7")  # §20.10 applies to tel too
    assert bare.uri.params == ()
    assert bare.tag == "7"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "<sip:a@b.c",
        "<sip:a@b.c>>",
        "<>",
        "<  >",
        '"unterminated <sip:a@b.c>',
        '"Bob" sip:a@b.c',  # quoted display name without <>
        "Bob Smith: <sip:a@b.c>",
        "Bob sip:a@b.c",
        "sip:a@b.c?subject=x",  # RFC 3261 §20: a URI with "?" needs <>
        "sip:a@b.c, sip:d@e.f",  # a list is no single address
        "<sip:a@b.c>, <sip:d@e.f>",
        "<sip:a@b.c> x",
        "<sip:a@b.c>;",
        "<sip:a@b.c>;tag=",
        "<sip:a@b.c>;=x",
        "<sip:a@b.c>;tag==x",
        '<sip:a@b.c>;tag="x',
        "<sip:a@b.c>;tag=x y",
        "<sip:a@b.c>;maddr=[::1",
        "<sip:a@b.c>;maddr=[zz]",
        "<http://example.com>",
        "<sip:a@b.c>;tag=<x",  # <> values are a deviation, but must close
        '"Bob" <sip:a@b.c> "Again"',
        "\x85Bob <sip:a@b.c>",  # C1 control (NEL) is no display-name letter
    ],
)
def test_invalid_name_addrs(text: str) -> None:
    with pytest.raises(InvalidURI):
        parse_name_addr(text)


@pytest.mark.parametrize("control", ["\x00", "\r", "\n", "\x0b", "\x1f", "\x7f"])
def test_control_characters_in_name_addr_are_refused(control: str) -> None:
    text = '"Al ice" <sip:alice@a.example>;tag=1'
    for where in range(len(text) + 1):
        with pytest.raises(InvalidURI):
            parse_name_addr(text[:where] + control + text[where:])


def test_name_addr_error_position_is_in_the_whole_text() -> None:
    with pytest.raises(InvalidURI) as caught:
        parse_name_addr('"Bob" <sip:bob@bi_loxi.com>;tag=1')
    assert caught.value.position == 17
    assert caught.value.text == '"Bob" <sip:bob@bi_loxi.com>;tag=1'


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (NameAddr(parse_uri("sip:a@b.c")), "<sip:a@b.c>"),
        (NameAddr(parse_uri("sip:a@b.c"), "Bob Smith"), "Bob Smith <sip:a@b.c>"),
        (NameAddr(parse_uri("sip:a@b.c"), "Bob  Smith"), '"Bob  Smith" <sip:a@b.c>'),
        (NameAddr(parse_uri("sip:a@b.c"), ""), '"" <sip:a@b.c>'),
        (NameAddr(parse_uri("sip:a@b.c"), 'say "hi" \\'), r'"say \"hi\" \\" <sip:a@b.c>'),
        (NameAddr(parse_uri("sip:a@b.c"), "Jörg"), '"Jörg" <sip:a@b.c>'),
        (NameAddr(parse_uri("sip:a@b.c;lr"), None, (("tag", "1"), ("x", None))),
         "<sip:a@b.c;lr>;tag=1;x"),
    ],
)  # fmt: skip
def test_name_addr_str(value: NameAddr, written: str) -> None:
    assert str(value) == written
    assert parse_name_addr(written) == value


# ---- Contact lists ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["*", " * ", "\t*\t"])
def test_contact_star(text: str) -> None:
    assert parse_contact_list(text) is None


def test_contact_list_splits_at_commas_outside_quotes_and_brackets() -> None:
    contacts = parse_contact_list(
        '"Mr. Watson, Jr." <sip:watson@worcester.bell-telephone.com>;q=0.7; expires=3600 ,'
        "<sip:a,b@c.example;lr>,sip:d@e.example;expires=0\t,  Bob <tel:+1-555-0100>"
    )
    assert contacts is not None
    assert [str(c.uri) for c in contacts] == [
        "sip:watson@worcester.bell-telephone.com",
        "sip:a,b@c.example;lr",
        "sip:d@e.example",
        "tel:+1-555-0100",
    ]
    assert contacts[0].display_name == "Mr. Watson, Jr."
    assert contacts[0].params == (("q", "0.7"), ("expires", "3600"))
    assert contacts[2].param("expires") == "0"
    assert contacts[3].display_name == "Bob"


def test_single_contact_list() -> None:
    assert parse_contact_list("<sip:bob@192.0.2.4>") == (parse_name_addr("<sip:bob@192.0.2.4>"),)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        ",",
        "<sip:a@b.c>,",
        ", <sip:a@b.c>",
        "<sip:a@b.c>,,<sip:d@e.f>",
        "*, <sip:a@b.c>",
        "<sip:a@b.c>, *",
        "**",
        "<sip:a@b.c> <sip:d@e.f>",
        # RFC 3261 §20.10's own example: the mailto: contact is outside what msilo can use
        '"Mr. Watson" <sip:watson@worcester.bell-telephone.com>;q=0.7, '
        '"Mr. Watson" <mailto:watson@bell-telephone.com> ;q=0.1',
    ],
)
def test_invalid_contact_lists(text: str) -> None:
    with pytest.raises(InvalidURI):
        parse_contact_list(text)
