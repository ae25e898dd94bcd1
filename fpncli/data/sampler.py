"""Seeded, aspect-ratio grouped batches, the same on every run and split across ranks.

Every random choice of the data pipeline (order, horizontal flips) is made here from
``(seed, epoch)``, so epoch ``e`` always yields the same batches: a resumed run simply skips
the batches it already trained on. The split across ranks follows
:class:`torch.utils.data.DistributedSampler` (shuffle the whole set, pad it to a multiple of
the world size, rank ``r`` takes every ``world``-th index), and every rank gets the same
number of batches, which DistributedDataParallel needs.

Batches hold images of one orientation only (landscape or portrait), as torchvision's
``GroupedBatchSampler`` does: images in a batch are padded to the largest, so mixing a
320x224 with a 224x320 image would waste almost half the batch on padding. The leftovers of
each group at the end of an epoch are batched together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

BatchItem = tuple[int, bool]  # (dataset index, horizontal flip)


class GroupedBatches:
    """The batches of each epoch for one rank.

    Args:
        groups: a group id per dataset item (e.g. 0 landscape, 1 portrait).
        batch_size: images per batch on this rank.
        seed: fixes order and flips of every epoch.
        flip: draw a horizontal flip for half the images.
        rank, world_size: this process's share under DistributedDataParallel.
    """

    def __init__(
        self,
        groups: Sequence[int],
        batch_size: int,
        seed: int = 0,
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not groups:
            raise ValueError("no items to batch")
        self.groups = list(groups)
        self.batch_size = batch_size
        self.seed = seed
        self.flip = flip
        self.rank = rank
        self.world_size = world_size

    @property
    def per_rank(self) -> int:
        return math.ceil(len(self.groups) / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return math.ceil(self.per_rank / self.batch_size)

    def epoch(self, epoch: int) -> list[list[BatchItem]]:
        """All batches of ``epoch`` for this rank, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.groups)
        order = rng.permutation(n)
        flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
        total = self.per_rank * self.world_size
        if total > n:  # pad by repeating from the start, as DistributedSampler does
            order = np.concatenate([order, np.resize(order, total - n)])
        mine = order[self.rank :: self.world_size]
        batches: list[list[BatchItem]] = []
        pending: dict[int, list[BatchItem]] = {}
        for idx in mine.tolist():
            bucket = pending.setdefault(self.groups[idx], [])
            bucket.append((idx, bool(flips[idx])))
            if len(bucket) == self.batch_size:
                batches.append(bucket)
                pending[self.groups[idx]] = []
        leftovers = [item for g in sorted(pending) for item in pending[g]]
        for i in range(0, len(leftovers), self.batch_size):
            batches.append(leftovers[i : i + self.batch_size])
        return batches

    def iterate(self, start_iteration: int = 0) -> Iterator[tuple[int, int, list[BatchItem]]]:
        """Endless ``(epoch, batch index in epoch, batch)`` from global iteration ``start_iteration``."""
        per_epoch = len(self)
        epoch, offset = divmod(start_iteration, per_epoch)
        while True:
            batches = self.epoch(epoch)
            for i in range(offset, per_epoch):
                yield epoch, i, batches[i]
            epoch, offset = epoch + 1, 0
