"""Small habits of LiveTalking's pages that this server accepts on request.

Pages from before 2026-04 `parseInt` the session id and send it back as a JSON
number: a uuid then becomes NaN/null and nothing is spoken. With
--numeric-session-ids sessions get 15 random digits instead (about 50 bits,
weaker than a uuid's 122: guessing one is still impractical over HTTP, but use
--auth-token on any shared network), and a number is accepted where a session
id is expected.

With --numeric-session-ids (the old pages' mode) two more habits are met:
- a body without `sessionid` means the pushed session when there is one
  (--transport rtmp|whip): old rtcpushapi.html/rtmpapi.html and the ASR page send
  none, and old LiveTalking defaulted it to its push session 0 (start with
  --push-session-id 0 so the ids they send elsewhere match);
- without a pushed session, POST /record without `sessionid` answers HTTP 200
  `{code: -1, msg: "session not found..."}` as LiveTalking does (webrtcapi-asr.html
  sends none, and its record buttons go by the HTTP status); nothing is recorded.
"""

from __future__ import annotations

import argparse
import secrets

from aiohttp import web

NUMERIC_ID_DIGITS = 15  # below 2**53: a JavaScript number holds it exactly


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--numeric-session-ids", dest="numeric_session_ids", action="store_true",
                        help="15-digit session ids that old LiveTalking pages can parseInt (weaker than uuids)")


def numeric_session_id() -> str:
    """15 random digits, never starting with 0 (so parseInt round-trips it)."""
    low = 10 ** (NUMERIC_ID_DIGITS - 1)
    return str(low + secrets.randbelow(9 * low))


def sessionid_as_text(body: dict, numeric: bool) -> dict:
    """The body with a JSON-number sessionid turned into its digits, when numeric ids are on."""
    value = body.get("sessionid")
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        return {**body, "sessionid": str(value)}
    return body


def with_push_session(body: dict, args: argparse.Namespace) -> dict:
    """The body with a missing sessionid set to the pushed session's, in the old pages' mode.

    Only an absent key: a `null` (what JSON makes of parseInt's NaN) named a session and failed."""
    if "sessionid" in body or not args.numeric_session_ids or args.transport == "webrtc":
        return body
    return {**body, "sessionid": args.push_session_id}


def session_not_found(body: dict, args: argparse.Namespace) -> web.Response | None:
    """LiveTalking's answer to a body naming no session (HTTP 200, code -1), in the old pages' mode; else None."""
    if "sessionid" in body or not args.numeric_session_ids:
        return None
    return web.json_response({"code": -1, "msg": "session not found: this request names no 'sessionid' "
                                                 "(send the id /offer answered); nothing was done"})
