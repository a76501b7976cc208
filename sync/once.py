"""Values computed once per key, shared by threads, in a bounded least-recently-used table.

Two sessions asking for the same avatar, clip or rig at once share one load; a load
of another key is not held up by it. The table is bounded by count and, when given
`size_of`, by bytes: sizes are measured again at each insertion (a value may grow,
e.g. an avatar's derived data), and the least recently used entries go until the rest
fit (the entry just loaded always stays). Evicting an entry only drops the table's
reference: whoever holds the value keeps it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class OnceCache(Generic[K, V]):
    def __init__(self, max_items: int | None = None, name: str = "cache", max_bytes: int | None = None,
                 size_of: Callable[[V], int] | None = None):
        if max_bytes is not None and size_of is None:
            raise ValueError("max_bytes needs size_of")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.size_of = size_of
        self.name = name
        self._values: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[K, threading.Lock] = {}

    def get(self, key: K, load: Callable[[], V]) -> V:
        """The value of `key`, calling `load` (blocking) only when no other thread has or is loading it."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._values:
                    return self._values[key]
            try:
                value = load()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._values[key] = value
                self._evict()
            return value

    def _evict(self) -> None:
        """Drop least recently used entries beyond the count and byte bounds (holding the lock)."""
        while self.max_items is not None and len(self._values) > self.max_items:
            evicted, _ = self._values.popitem(last=False)
            logger.info("%s full: evicted %s", self.name, evicted)
        if self.max_bytes is None:
            return
        sizes = {key: self.size_of(value) for key, value in self._values.items()}
        total = sum(sizes.values())
        while total > self.max_bytes and len(self._values) > 1:
            evicted, _ = self._values.popitem(last=False)
            total -= sizes[evicted]
            logger.info("%s over %.0f MB: evicted %s", self.name, self.max_bytes / 2**20, evicted)

    def nbytes(self) -> int:
        """What the entries take now, by size_of (0 without it)."""
        if self.size_of is None:
            return 0
        with self._lock:
            return sum(self.size_of(value) for value in self._values.values())

    def forget(self, predicate: Callable[[K], bool]) -> None:
        """Drop the entries whose key matches (e.g. a rebuilt avatar)."""
        with self._lock:
            for key in [k for k in self._values if predicate(k)]:
                del self._values[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)
