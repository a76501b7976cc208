"""A bounded FIFO between threads that can also be cleared, filtered and peeked.

`queue.Queue` does put/get with back-pressure; interrupts also need to drop what
is queued, keep only some items, or look ahead without taking. Those reach into
the queue's internals (its mutex, deque and conditions): this is the one module
that does, so every other module uses plain methods.
"""

from __future__ import annotations

import queue
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class BoundedQueue(queue.Queue, Generic[T]):
    """queue.Queue (maxsize > 0) plus atomic bulk operations."""

    def __init__(self, maxsize: int):
        if maxsize <= 0:
            raise ValueError("a BoundedQueue needs a maxsize above 0")
        super().__init__(maxsize)

    def clear(self) -> list[T]:
        """Remove everything queued; returns what was removed (oldest first)."""
        with self.mutex:
            removed = list(self.queue)
            self.queue.clear()
            self.not_full.notify_all()
        return removed

    def remove_if(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove the queued items for which `predicate` is true; the others keep their order."""
        with self.mutex:
            removed = [item for item in self.queue if predicate(item)]
            if removed:
                kept = [item for item in self.queue if not predicate(item)]
                self.queue.clear()
                self.queue.extend(kept)
                self.not_full.notify_all()
        return removed

    def peek(self, count: int) -> list[T]:
        """The next `count` items, without taking them."""
        with self.mutex:
            return [self.queue[i] for i in range(min(count, len(self.queue)))]

    def any(self, predicate: Callable[[T], bool]) -> bool:
        with self.mutex:
            return any(predicate(item) for item in self.queue)

    def put_all(self, items: list[T]) -> bool:
        """Queue all of `items` or none (False when they do not fit now); never blocks."""
        with self.mutex:
            if len(self.queue) + len(items) > self.maxsize:
                return False
            self.queue.extend(items)
            self.unfinished_tasks += len(items)
            self.not_empty.notify(len(items))
        return True
