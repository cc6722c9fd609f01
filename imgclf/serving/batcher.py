"""Adaptive batching: images from concurrent requests share one forward pass.

One inference thread takes everything queued (up to `max_batch_size` images) and runs it as one
batch per model snapshot. It never waits for more: under no load an image goes to the model at
once; under load the images that arrive while a forward pass runs form the next batch, so batches
grow with the load by themselves.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from imgclf.serving.holder import LoadedModel


@dataclass
class _Item:
    image: np.ndarray  # (S, S, 3) float32
    model: LoadedModel
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """Requests queue images; one thread runs them in batches. The images of one `submit_many`
    call go into one queue entry, so a /predict_batch request is not split by a batch boundary
    unless it is larger than the room left. Futures resolve to the image's class probabilities
    (K floats, the order of its model's classes), computed by the model it was submitted with."""

    def __init__(self, max_batch_size: int, on_batch: Callable[[int], None] | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.on_batch = on_batch
        self.queue: queue.Queue[list[_Item] | None] = queue.Queue()
        self._carry: list[_Item] = []  # taken from the queue but over the last batch's size
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def submit_many(
        self, images: list[np.ndarray], model: LoadedModel
    ) -> list[concurrent.futures.Future]:
        items = [_Item(image, model) for image in images]
        if items:
            self.queue.put(items)
        return [item.future for item in items]

    def _collect(self) -> list[_Item] | None:
        """The next batch: the carry or the first entry (blocking), then whatever is queued."""
        if self._carry:
            items, self._carry = self._carry, []
        else:
            first = self.queue.get()
            if first is None:
                return None
            items = first
        while len(items) < self.max_batch_size:
            try:
                entry = self.queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                self.queue.put(None)  # stop after this batch
                break
            items.extend(entry)
        if len(items) > self.max_batch_size:
            items, self._carry = items[: self.max_batch_size], items[self.max_batch_size :]
        return items

    def _run(self) -> None:
        while (items := self._collect()) is not None:
            groups: dict[int, list[_Item]] = {}
            for item in items:  # normally one group; two right after a swap
                groups.setdefault(id(item.model), []).append(item)
            for group in groups.values():
                self._forward(group)

    def _forward(self, group: list[_Item]) -> None:
        model = group[0].model
        try:
            probabilities = model.forward(np.stack([i.image for i in group]))
            if self.on_batch is not None:
                self.on_batch(len(group))
            for item, row in zip(group, probabilities, strict=True):
                item.future.set_result(row)
        except Exception as exc:
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=10)
