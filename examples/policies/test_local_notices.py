"""Tests of the policy that notifies only senders of our own domains."""

from __future__ import annotations

import pytest
from local_notices import LocalNoticePolicy

from libmsilo import Silo
from libmsilo.testing import SnapshotChecker, assert_no_notice, assert_notice, assert_stored, sip

pytestmark = pytest.mark.msilo(
    from_address="sip:postmaster@example.com",
    offline_message="$rU is offline; your message will be delivered when $rU is back.",
    content_type_hdr="Content-Type: text/plain; charset=utf-8",
)

ALICE = "sip:alice@example.com"


def policy(silo: Silo) -> LocalNoticePolicy:
    return LocalNoticePolicy(silo, ["example.com", "example.org"])


@pytest.mark.parametrize(
    "sender",
    ["sip:bob@example.com", "sip:bob@EXAMPLE.org", "sip:bob@sales.example.com"],
)
def test_our_senders_are_told(msilo: Silo, sender: str) -> None:
    result = policy(msilo).on_message(sip.message(sender, ALICE, "lunch?"))
    assert_notice(result, to=sender, contains="alice is offline")
    assert_stored(msilo, ALICE, count=1, body="lunch?")


@pytest.mark.parametrize(
    "sender",
    ["sip:mallory@example.net", "sip:mallory@badexample.com", "sip:mallory@example.com.evil.net"],
)
def test_foreign_senders_are_not_told_but_their_message_is_stored(msilo: Silo, sender: str) -> None:
    result = policy(msilo).on_message(sip.message(sender, ALICE, "hi"))
    assert result.stored
    assert_no_notice(result)
    assert_stored(msilo, ALICE, count=1)


def test_the_notice_goes_to_the_senders_contact(
    msilo: Silo, msilo_snapshot: SnapshotChecker
) -> None:
    request = sip.message(
        '"Bob" <sip:bob@example.com>',
        ALICE,
        "lunch?",
        headers={"Contact": "<sip:bob@192.0.2.4:5060>"},
    )
    notice = assert_notice(policy(msilo).on_message(request), to="sip:bob@192.0.2.4:5060")
    msilo_snapshot.check(notice)


def test_every_store_keeps_foreign_messages(msilo_each: Silo) -> None:
    result = policy(msilo_each).on_message(sip.message("sip:eve@example.net", ALICE, "x"))
    assert_no_notice(result)
    assert_stored(msilo_each, ALICE, count=1, body="x")
