"""Values computed once per key, shared by threads, in a bounded least-recently-used table.

Two sessions asking for the same avatar, clip or rig at once share one load; a load
of another key is not held up by it. Evicting an entry only drops the table's
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
    def __init__(self, max_items: int | None = None, name: str = "cache"):
        self.max_items = max_items
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
                while self.max_items is not None and len(self._values) > self.max_items:
                    evicted, _ = self._values.popitem(last=False)
                    logger.info("%s full: evicted %s", self.name, evicted)
            return value

    def forget(self, predicate: Callable[[K], bool]) -> None:
        """Drop the entries whose key matches (e.g. a rebuilt avatar)."""
        with self._lock:
            for key in [k for k in self._values if predicate(k)]:
                del self._values[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)
