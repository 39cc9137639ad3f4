"""Pseudo-variables as Kamailio itself renders them: Debian's Kamailio logs each variable of a
few MESSAGEs through xlog (tests/kamailio/pv_probe.cfg), and libmsilo's templates in the
``kamailio`` dialect must render the same text from the same request."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from libmsilo import SipRequest
from libmsilo.templating import compile_template
from tests.kamailio_harness import Kamailio, Sipp, network, require_tools, wait_for

pytestmark = pytest.mark.timeout(90)

HERE = Path(__file__).resolve().parent
# Every variable both render; $si/$sp/$Ts/$Tf depend on the moment and the socket, not the text.
VARIABLES = (
    "ru", "rU", "rd", "rp", "ou", "oU", "od", "op", "fu", "fU", "fd", "fn", "tu", "tU", "td",
    "tn", "ci", "rm", "cs", "ct", "cT", "ai",
)  # fmt: skip
CASES = {
    "plain": {
        "ruri": "sip:bob@example.com",
        "from_hdr": '"Alice \\"A\\" Smith" <SIP:alice@Example.org;transport=udp>',
        "to_hdr": "Bob <sips:bob@example.com:5071>",
        "contact_hdr": '"Al" <sip:a@192.0.2.10:5062;transport=tcp>;expires=60, <sip:b@h.example>',
    },
    "sips and ports": {
        "ruri": "sips:carol@example.net;transport=tls",
        "from_hdr": "sip:alice@example.org",
        "to_hdr": "<sip:carol@example.net:5080>",
        "contact_hdr": "<sips:c@192.0.2.11>",
    },
    "port given": {
        "ruri": "sip:dave@192.0.2.20:5090",
        "from_hdr": "Al <sip:al@example.org>",
        "to_hdr": "sip:dave@192.0.2.20",
        "contact_hdr": "*",
    },
}


def _logged(log: str) -> list[dict[str, str]]:
    """The variables of each request, in the order Kamailio received them."""
    requests: list[dict[str, str]] = []
    for line in log.splitlines():
        _, marker, rest = line.partition("PV|")
        if not marker:
            continue
        name, _, value = rest.partition("|")
        if name == "mb":
            requests.append({})
        requests[-1][name] = value
    return [r for r in requests if "end" in r]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, str]]]:
    require_tools("xlog", "sl", "pv")
    workdir = tmp_path_factory.mktemp("pv")
    with network() as net:
        kamailio = Kamailio(net, workdir, HERE / "kamailio" / "pv_probe.cfg", dict(os.environ))
        kamailio.start()
        try:
            sipp = Sipp(net, workdir, kamailio.address)
            for keys in CASES.values():
                sipp.run("pv_probe.xml", **keys)
            found = wait_for(
                lambda: r if len(r := _logged(kamailio.log.read_text())) == len(CASES) else None
            )
        finally:
            kamailio.stop()
    yield found


@pytest.mark.parametrize("case", range(len(CASES)), ids=list(CASES))
def test_templates_render_what_kamailio_renders(logged: list[dict[str, str]], case: int) -> None:
    values = logged[case]
    raw = base64.b64decode(values["mb"])
    request = SipRequest.parse(raw)
    assert request.body == base64.b64decode(values["rb"])

    def render(source: str) -> str:
        return compile_template(source, "kamailio").render(request, now=time.time(), tz=UTC)

    ours = {name: render(f"${name}") for name in VARIABLES}
    theirs = {name: values[name] for name in VARIABLES}
    assert ours == theirs
    assert render("$hdr(X-Probe)") == values["hdr"]
