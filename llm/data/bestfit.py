"""Best-fit packing of whole items into fixed-size rows, decided on lengths alone.

A buffer of `size` items is kept full. A row is filled by repeatedly taking the longest buffered
item that still fits whole (the earliest added of equals); when none fits, one item is cropped to
fill the row exactly. Which one is a choice of the stage: pretraining crops the shortest (the
least waste), midtraining the oldest in the buffer.

Only lengths live here, so the same decisions serve the loaders, which copy the tokens, and the
planner, which counts the rows of an epoch without any tokens. The lengths are kept sorted as
(length, arrival) keys, so each choice is a binary search.
"""

from bisect import bisect_left, insort
from typing import Callable

CROPS = ("shortest", "oldest")


class BestFitBuffer:
    """Buffered item lengths, each known by its arrival number (0, 1, 2, ... in the order added)."""

    def __init__(self, size: int, crop: str = "shortest"):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if size < 1:
            raise ValueError(f"the best-fit buffer size must be at least 1, got {size}")
        self.size, self.crop = size, crop
        self._keys: list[tuple[int, int]] = []
        self._lengths: dict[int, int] = {}  # by arrival; insertion order is arrival order
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, length: int) -> int:
        """Buffer an item of `length` tokens; returns its arrival number."""
        arrival = self._arrivals
        insort(self._keys, (length, arrival))
        self._lengths[arrival] = length
        self._arrivals += 1
        return arrival

    def _take(self, room: int) -> tuple[int, int]:
        """Remove the item to place next in `room` tokens: (arrival, length)."""
        fitting = bisect_left(self._keys, (room + 1,))  # keys before this have length <= room
        if fitting:
            index = bisect_left(self._keys, (self._keys[fitting - 1][0],), 0, fitting)
        elif self.crop == "shortest":
            index = 0
        else:
            oldest = next(iter(self._lengths))
            index = bisect_left(self._keys, (self._lengths[oldest], oldest))
        length, arrival = self._keys.pop(index)
        del self._lengths[arrival]
        return arrival, length

    def pack_row(self, capacity: int, refill: Callable[[], None]) -> list[tuple[int, int]]:
        """Fill one row of `capacity` tokens: (arrival, tokens used) of each item placed, in row order.

        `refill()` must add items; it is called before each choice while fewer than `size` are held.
        Only the last item placed can be cropped (used < its length).
        """
        placed, filled = [], 0
        while filled < capacity:
            while len(self._keys) < self.size:
                refill()
            arrival, length = self._take(capacity - filled)
            used = min(length, capacity - filled)
            placed.append((arrival, used))
            filled += used
        return placed
