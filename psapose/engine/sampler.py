"""A deterministic, resumable, rank-aware sampler yielding ``(index, epoch)`` keys."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler):
    """Shuffled by ``(seed, epoch)`` alone and sharded by global batch.

    Each global batch of ``batch_size * world_size`` consecutive shuffled indices
    is cut into ``world_size`` contiguous chunks, rank ``r`` taking chunk ``r``:
    one process with the same global batch, run chunk by chunk, sees exactly the
    samples of each DDP rank. Keys carry the epoch, so augmentation draws do not
    depend on worker state and a resumed run repeats them exactly.

    ``drop_last`` (training) drops the incomplete last global batch; otherwise
    the order is padded by wrapping around, and padded samples are repeated
    indices (evaluation removes them by index).

    ``set_epoch(epoch, start_batch=n)`` skips the epoch's first ``n`` global
    batches (training only): a run resumed from a checkpoint written mid-epoch
    sees exactly the batches it had not trained on, without loading the others.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if size <= 0:
            raise ValueError("the dataset is empty")
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Draw the order of ``epoch``, starting after its first ``start_batch`` batches."""
        if start_batch and not self.drop_last:
            raise ValueError("start_batch needs drop_last=True (training batches)")
        if not 0 <= start_batch <= self.num_batches():
            raise ValueError(
                f"start_batch {start_batch} is outside the epoch's 0..{self.num_batches()} batches"
            )
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def num_batches(self) -> int:
        if self.drop_last:
            return self.size // self.global_batch
        return -(-self.size // self.global_batch)

    def __len__(self) -> int:
        if self.drop_last:
            return (self.num_batches() - self.start_batch) * self.batch_size
        return -(-self.size // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7919]).permutation(self.size)
        else:
            order = np.arange(self.size)
        if self.drop_last:
            batches = order[: self.num_batches() * self.global_batch].reshape(-1, self.global_batch)
            mine = batches[
                self.start_batch :, self.rank * self.batch_size : (self.rank + 1) * self.batch_size
            ]
            indices = mine.reshape(-1)
        else:
            # Evaluation: contiguous shards, padded to equal length.
            per_rank = -(-self.size // self.world_size)
            padded = np.resize(order, per_rank * self.world_size)
            indices = padded[self.rank * per_rank : (self.rank + 1) * per_rank]
        return iter([(int(i), self.epoch) for i in indices])
