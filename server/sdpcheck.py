"""A cheap look at an offer's SDP before anything is built for it.

Building a session (engine, TTS, peer connection) costs far more than reading a
few lines of text, so an offer that cannot lead to a working DTLS-SRTP call is
refused first: it must be SDP, carry at least one media section of a known kind,
a DTLS fingerprint for every section, ICE credentials, and a bounded number of
candidates and sections. At most one audio and one video section: the server
reads one microphone and one camera, and aiortc would queue the decoded frames
of any further track without bound, so such an offer is refused here.
"""

from __future__ import annotations

MAX_MEDIA_SECTIONS = 8  # audio + video + data, and the page's microphone and camera, with room to spare
MAX_CANDIDATES = 64
MAX_LINES = 2000
MEDIA_KINDS = ("audio", "video", "application")
MAX_SECTIONS_OF_KIND = {"audio": 1, "video": 1, "application": 1}  # the avatar's tracks + mic, camera, events


class OfferRejected(ValueError):
    """The offer's SDP cannot be used; the message says why."""


def check_offer_sdp(sdp: str) -> None:
    lines = [line.strip() for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        raise OfferRejected("the offer is not SDP (it must start with v=0)")
    if len(lines) > MAX_LINES:
        raise OfferRejected(f"the offer SDP has more than {MAX_LINES} lines")
    session, sections = _split_sections(lines)
    if not sections:
        raise OfferRejected("the offer SDP has no media section (m=): add an audio or video transceiver")
    if len(sections) > MAX_MEDIA_SECTIONS:
        raise OfferRejected(f"the offer SDP has {len(sections)} media sections (at most {MAX_MEDIA_SECTIONS})")
    candidates = sum(line.startswith("a=candidate:") for line in lines)
    if candidates > MAX_CANDIDATES:
        raise OfferRejected(f"the offer SDP has {candidates} ICE candidates (at most {MAX_CANDIDATES})")
    seen = {kind: 0 for kind in MEDIA_KINDS}
    for index, section in enumerate(sections):
        kind = section[0][2:].split(" ", 1)[0]
        if kind not in MEDIA_KINDS:
            raise OfferRejected(f"media section {index} is {kind!r}: only audio, video and application are used")
        seen[kind] += 1
        if seen[kind] > MAX_SECTIONS_OF_KIND[kind]:
            raise OfferRejected(f"the offer SDP has more than {MAX_SECTIONS_OF_KIND[kind]} {kind} section: offer one "
                                f"audio and one video transceiver (the microphone and camera go on them, sendrecv)")
        if not _has(section, session, "a=fingerprint:"):
            raise OfferRejected(f"media section {index} ({kind}) has no DTLS fingerprint (a=fingerprint:)")
        if not (_has(section, session, "a=ice-ufrag:") and _has(section, session, "a=ice-pwd:")):
            raise OfferRejected(f"media section {index} ({kind}) has no ICE credentials (a=ice-ufrag/a=ice-pwd)")


def _split_sections(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _has(section: list[str], session: list[str], prefix: str) -> bool:
    return any(line.startswith(prefix) for line in section) or any(line.startswith(prefix) for line in session)
