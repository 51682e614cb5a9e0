"""Resampling prompts from an iterable (streaming) `train_dataset` through a bounded buffer.

Dynamic sampling draws fresh prompts for its extra generation rounds. A map-style dataset is indexed by a sampler; a
stream cannot be, so `StreamingPromptSampler` keeps at most `buffer_size` records read ahead from its own pass over the
stream and draws from them (at random with `shuffle`, else in stream order), refilling each slot from the stream. When
the stream ends, the buffer drains, then a new pass (epoch) starts. Memory stays `O(buffer_size)` records whatever the
stream's length.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any


class StreamingPromptSampler:
    """Draws records from an iterable dataset through a bounded buffer.

    Args:
        dataset: any iterable of records (e.g. a `datasets.IterableDataset`); it is iterated once per epoch, and its
            `set_epoch` (if any) is called before each pass so upstream shuffles reshuffle.
        buffer_size: maximum number of records held at once (`>= 1`).
        seed: seed of the draws; equal seeds over equal streams give equal draws.
        shuffle: draw uniformly from the buffer (a shuffle buffer) instead of in stream order.
    """

    def __init__(self, dataset: Iterable[dict[str, Any]], buffer_size: int, seed: int = 0, shuffle: bool = True):
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}.")
        self.dataset = dataset
        self.buffer_size = buffer_size
        self.shuffle = shuffle
        self.epoch = 0
        self._rng = random.Random(seed)
        self._buffer: list[dict[str, Any]] = []
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._exhausted = False

    def __len__(self) -> int:
        """Records currently buffered."""
        return len(self._buffer)

    def _top_up(self) -> None:
        if self._exhausted:
            return
        if self._iterator is None:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            self._iterator = iter(self.dataset)
        while len(self._buffer) < self.buffer_size:
            try:
                self._buffer.append(next(self._iterator))
            except StopIteration:
                self._exhausted = True
                return

    def _next_epoch(self) -> None:
        self.epoch += 1
        self._iterator, self._exhausted = None, False

    def draw(self, k: int) -> list[dict[str, Any]]:
        """`k` records; each is taken out of the buffer, so one draw repeats a record only across epochs."""
        records = []
        for _ in range(k):
            self._top_up()
            if not self._buffer:
                self._next_epoch()
                self._top_up()
                if not self._buffer:
                    raise ValueError("The train_dataset stream yielded no records to resample from.")
            if self.shuffle:
                index = self._rng.randrange(len(self._buffer))
                self._buffer[index], self._buffer[-1] = self._buffer[-1], self._buffer[index]
                records.append(self._buffer.pop())
            else:
                records.append(self._buffer.pop(0))
        return records
