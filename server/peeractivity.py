"""Is the remote peer still there? Its RTCP receiver reports say so, whatever client it is.

A browser that receives our tracks sends RTCP receiver reports about every
second, data channel or not (LiveTalking's pages open none and send no
heartbeat). aiortc records the latest report of each sender as its
`remote-inbound-rtp` stats entry, timestamped on arrival: that is the
observable sign of life. (ICE consent checks run beside it: a peer that stops
answering them is closed by aiortc as "failed" within about 30 s.)
"""

from __future__ import annotations

import datetime

from aiortc import RTCPeerConnection


async def seconds_since_peer_report(pc: RTCPeerConnection) -> float | None:
    """Seconds since the newest RTCP receiver report from the peer; None if it never sent one."""
    newest: datetime.datetime | None = None
    for sender in pc.getSenders():
        if sender.track is None:
            continue
        try:
            report = await sender.getStats()
        except Exception:  # a transport closing under us: no news from this sender
            continue
        for stats in report.values():
            if stats.type == "remote-inbound-rtp" and (newest is None or stats.timestamp > newest):
                newest = stats.timestamp
    if newest is None:
        return None
    return (datetime.datetime.now(datetime.timezone.utc) - newest).total_seconds()
