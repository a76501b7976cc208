"""Small habits of LiveTalking's pages that this server accepts on request.

Pages from before 2026-04 `parseInt` the session id and send it back as a JSON
number: a uuid then becomes NaN/null and nothing is spoken. With
--numeric-session-ids sessions get 15 random digits instead (about 50 bits,
weaker than a uuid's 122: guessing one is still impractical over HTTP, but use
--auth-token on any shared network), and a number is accepted where a session
id is expected.
"""

from __future__ import annotations

import argparse
import secrets

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
