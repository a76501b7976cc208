"""The recogniser's waiting room: fair between sources, bounded, cancellable.

Every request belongs to a source (a WebRTC session, a `/api/asr` socket) and
the source to a group ("session" or "socket"). The worker serves the groups in
turn, and the sources of a group in turn (round-robin at both levels), so one
source sending much cannot starve the others. Live sessions (a person waiting for
an answer) get up to `SESSION_TURNS` requests in a row before a socket's turn, so
however many sockets flood the recogniser, a talker waits only for the utterance
being transcribed, and sockets are still served while people talk. Per source at most one speculative request waits (a
newer speculation replaces the older: only the latest "turn so far" is worth
transcribing) and at most `MAX_FINALS_PER_SOURCE` final ones (the end of a turn,
or a 30 s piece of a monologue), which speculation never pushes out. A ticket
cancels its request while it waits (its caller has gone, or the user spoke on);
a source closing cancels all of its requests.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np

from listen.transcript import Transcript

MAX_FINALS_PER_SOURCE = 4  # a 2-minute monologue's 30 s pieces wait; more means the source is flooding
MAX_WAITING = 64  # every source together: beyond this the recogniser is refused for everyone
SESSION_TURNS = 4  # requests of the "session" group served in a row while it has work; every other group: 1


class QueueFull(Exception):
    """This source (or the whole queue) has as much waiting as it may."""


@dataclass(eq=False)
class ASRRequest:
    audio: np.ndarray
    on_text: Callable[[Transcript], None]
    on_error: Callable[[str], None]
    submitted: float
    source: Hashable
    speculative: bool = False
    group: str = "session"
    cancelled: bool = field(default=False, init=False)


@dataclass
class _Source:
    finals: deque = field(default_factory=deque)
    speculation: ASRRequest | None = None

    def __len__(self) -> int:
        return len(self.finals) + (self.speculation is not None)


class FairQueue:
    """Thread-safe; `get` blocks until a request (or the stop signal, None) is there."""

    def __init__(self, max_finals_per_source: int = MAX_FINALS_PER_SOURCE, max_waiting: int = MAX_WAITING):
        self.max_finals_per_source = max_finals_per_source
        self.max_waiting = max_waiting
        # round-robin order at both levels: the first is served next
        self._groups: OrderedDict[str, OrderedDict[Hashable, _Source]] = OrderedDict()
        self._group_of: dict[Hashable, str] = {}
        self._last_group: str | None = None  # the group served last, and how many of its requests in a row
        self._turns_in_a_row = 0
        self._waiting = 0
        self._stopped = False
        self._changed = threading.Condition()
        self.replaced = 0  # speculations pushed out by a newer one of the same source
        self.cancelled = 0  # requests whose caller went away before their turn

    def _source(self, key: Hashable) -> _Source | None:
        group = self._group_of.get(key)
        return None if group is None else self._groups[group][key]

    def _forget(self, key: Hashable) -> None:
        group = self._group_of.pop(key)
        del self._groups[group][key]
        if not self._groups[group]:
            del self._groups[group]

    def put(self, request: ASRRequest) -> ASRRequest | None:
        """Queue a request; returns the speculation it replaced (never run), if any. Raises QueueFull."""
        with self._changed:
            source = self._source(request.source)
            replaced = None
            if request.speculative:
                if source is not None and source.speculation is not None:
                    replaced = source.speculation
                elif self._waiting >= self.max_waiting:
                    raise QueueFull(f"{self._waiting} utterances waiting")
            else:
                if source is not None and len(source.finals) >= self.max_finals_per_source:
                    raise QueueFull(f"{len(source.finals)} of this source's utterances waiting")
                if self._waiting >= self.max_waiting:
                    if source is None or source.speculation is None:
                        raise QueueFull(f"{self._waiting} utterances waiting")
                    replaced = source.speculation  # a final is worth more than the same source's speculation
                    source.speculation = None
                    self._waiting -= 1
            if source is None:
                source = _Source()
                self._groups.setdefault(request.group, OrderedDict())[request.source] = source
                self._group_of[request.source] = request.group
            if request.speculative:
                if replaced is None:
                    self._waiting += 1
                source.speculation = request
            else:
                source.finals.append(request)
                self._waiting += 1
            if replaced is not None:
                replaced.cancelled = True
                self.replaced += 1
            self._changed.notify()
            return replaced

    def get(self) -> ASRRequest | None:
        """The next request, served round-robin over groups and sources; None once stopped."""
        with self._changed:
            while True:
                if self._stopped:
                    return None
                request = self._take()
                if request is not None:
                    return request
                self._changed.wait()

    def _take(self) -> ASRRequest | None:
        while self._groups:
            group = next(iter(self._groups))
            if group == self._last_group and len(self._groups) > 1 and self._turns_in_a_row >= self._turns_of(group):
                self._groups.move_to_end(group)  # its turns are used up: the other groups go first
                continue
            if group != self._last_group:
                self._last_group, self._turns_in_a_row = group, 0
            sources = self._groups[group]
            key, source = next(iter(sources.items()))
            request = source.finals.popleft() if source.finals else source.speculation
            if request is source.speculation:
                source.speculation = None
            if request is not None:
                self._waiting -= 1
            if len(source):
                sources.move_to_end(key)  # it had its turn: the others of its group go first
            else:
                self._forget(key)
            if request is not None and not request.cancelled:
                self._turns_in_a_row += 1
                return request
        return None

    @staticmethod
    def _turns_of(group: str) -> int:
        return SESSION_TURNS if group == "session" else 1

    def promote(self, request: ASRRequest) -> None:
        """A waiting speculation became the final transcript's request: nothing may replace it now."""
        with self._changed:
            source = self._source(request.source)
            request.speculative = False
            if source is not None and source.speculation is request:
                source.speculation = None
                source.finals.append(request)

    def cancel(self, request: ASRRequest) -> bool:
        """Withdraw a waiting request; False when it was already taken (running or done)."""
        with self._changed:
            source = self._source(request.source)
            if source is None or request.cancelled:
                return False
            if source.speculation is request:
                source.speculation = None
            elif request in source.finals:
                source.finals.remove(request)
            else:
                return False
            request.cancelled = True
            self._waiting -= 1
            self.cancelled += 1
            if not len(source):
                self._forget(request.source)
            return True

    def cancel_source(self, key: Hashable) -> int:
        """Withdraw everything a source has waiting (the session or socket closed)."""
        with self._changed:
            source = self._source(key)
            if source is None:
                return 0
            self._forget(key)
            requests = [*source.finals, *([source.speculation] if source.speculation else [])]
            for request in requests:
                request.cancelled = True
            self._waiting -= len(requests)
            self.cancelled += len(requests)
            return len(requests)

    def drain(self) -> list[ASRRequest]:
        """Stop: every waiting request is taken out (to be told), and `get` answers None from now on."""
        with self._changed:
            self._stopped = True
            requests = []
            for sources in self._groups.values():
                for source in sources.values():
                    requests.extend(source.finals)
                    if source.speculation is not None:
                        requests.append(source.speculation)
            self._groups.clear()
            self._group_of.clear()
            self._waiting = 0
            self._changed.notify_all()
            return requests

    def __len__(self) -> int:
        with self._changed:
            return self._waiting
