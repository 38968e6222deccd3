"""A DataLoader whose position can be saved and restored exactly.

Epoch `e` visits the dataset in the permutation drawn from `torch.Generator().manual_seed(seed + e)`
(or in order when not shuffling), cut into batches. The loader's position is just
(epoch, batches_consumed), so resuming means skipping to batch `batches_consumed` of that
epoch's permutation; nothing is replayed. Batches are only counted when handed to the caller,
so batches prefetched by workers but never used are produced again after a restore.

The transforms are deterministic, so a restored loader yields bit-identical batches whatever the
number of workers; the per-worker RNGs (torch, numpy, random) are seeded from `seed` for any
library code that draws random numbers inside a worker.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pirecon.batch import Batch
from pirecon.data.cache import InMemoryDataset
from pirecon.errors import DatasetError


def _on_one_thread(fn, *args):
    """fn(*args) with torch on one intra-op thread, as in DataLoader workers. Per-sample tensors
    are small: split over threads on busy cores, the preprocessing ran many times slower in the
    main process (0 workers) than on one thread. Results do not depend on the thread count."""
    threads = torch.get_num_threads()
    if threads == 1:
        return fn(*args)
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


class _Processed(Dataset):
    """dataset[i] passed through the preprocessor (runs inside workers, or on one torch thread)."""

    def __init__(self, dataset, preprocessor):
        self.dataset = dataset
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _on_one_thread(lambda: self.preprocessor(self.dataset[index]))


class _Collate:
    """preprocessor.collate on one torch thread (picklable for workers)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, samples):
        return _on_one_thread(self.collate, samples)


class _EpochBatchSampler:
    """Index batches of one epoch, starting at batch `start`; `epoch` and `start` are set before use."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.dataset_size, self.batch_size = size, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.size = size // world_size  # samples per rank per epoch (equal on every rank)
        self.epoch = 0
        self.start = 0

    def order(self, epoch: int) -> list[int]:
        """This rank's sample order in `epoch`: every `world_size`-th index of the epoch's permutation."""
        if not self.shuffle:
            order = list(range(self.dataset_size))
        else:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        return order[self.rank::self.world_size][:self.size]

    def __len__(self) -> int:
        if self.drop_last:
            return self.size // self.batch_size
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        for b in range(self.start, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a worker from the torch seed the DataLoader gave it."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ResumableLoader:
    """Iterates `Batch` objects epoch by epoch; `state_dict()` / `load_state_dict()` save the position.

    `for batch in loader` runs the rest of the current epoch; `loader.forever()` runs epoch after
    epoch. Only one iteration should be active at a time.
    """

    def __init__(self, dataset, preprocessor, batch_size: int, num_workers: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0, world_size: int = 1,
                 cache_in_memory: bool = False, prefetch_factor: int = 2, persistent_workers: bool = True,
                 pin_memory: bool = False):
        if batch_size <= 0:
            raise DatasetError(f"--batch_size={batch_size}: expected a positive integer")
        size = len(dataset)
        self._sampler = _EpochBatchSampler(size, batch_size, shuffle, drop_last, seed, rank, world_size)
        if len(self._sampler) == 0:
            raise DatasetError(
                f"the dataset has {size} samples, fewer than --batch_size={batch_size} x {world_size} "
                f"process(es), so an epoch has no full batch; lower the batch size")
        self.dataset = dataset
        self.preprocessor = preprocessor
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.epoch = 0
        self.batches_consumed = 0
        processed = _Processed(dataset, preprocessor)
        self._loader = DataLoader(
            InMemoryDataset(processed) if cache_in_memory else processed,
            batch_sampler=self._sampler,
            collate_fn=_Collate(preprocessor.collate),
            num_workers=num_workers,
            worker_init_fn=_seed_worker if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            pin_memory=pin_memory,
        )

    @property
    def seed(self) -> int:
        return self._sampler.seed

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._sampler)

    def __iter__(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch; the position advances as batches are taken."""
        if self.batches_consumed >= len(self):
            self.epoch, self.batches_consumed = self.epoch + 1, 0
        self._sampler.epoch, self._sampler.start = self.epoch, self.batches_consumed
        for batch in self._loader:
            self.batches_consumed += 1
            yield batch
        self.epoch, self.batches_consumed = self.epoch + 1, 0

    def forever(self) -> Iterator[Batch]:
        """Batches across epochs without end (each epoch reshuffled from seed + epoch)."""
        while True:
            yield from self

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore a position from `state_dict()`; the next batch is the one that would have come next."""
        missing = [k for k in ("epoch", "batches_consumed") if k not in state]
        if missing:
            raise DatasetError(f"loader state {dict(state)} lacks {missing}; expected keys epoch, batches_consumed, seed")
        self.epoch = int(state["epoch"])
        self.batches_consumed = int(state["batches_consumed"])
        if "seed" in state:
            self._sampler.seed = int(state["seed"])


def make_dataloader(dataset, preprocessor, batch_size: int, num_workers: int = 0, seed: int = 0,
                    shuffle: bool = True, drop_last: bool = True, rank: int = 0,
                    world_size: int = 1, cache_in_memory: bool = False, prefetch_factor: int = 2,
                    persistent_workers: bool = True, pin_memory: bool = False) -> ResumableLoader:
    """A resumable loader over a map-style `dataset` (picklable when num_workers > 0) that applies
    `preprocessor` per sample in the workers and `preprocessor.collate` per batch.

    With several processes, each `rank` takes every `world_size`-th sample of the shared epoch
    permutation, so ranks see disjoint samples and the same number of batches.
    `cache_in_memory`: keep every preprocessed sample in RAM after its first use (`InMemoryDataset`).
    `pin_memory`: batches come in page-locked memory (for copies to a GPU that do not block the host)."""
    return ResumableLoader(dataset, preprocessor, batch_size, num_workers=num_workers, seed=seed,
                           shuffle=shuffle, drop_last=drop_last, rank=rank, world_size=world_size,
                           cache_in_memory=cache_in_memory, prefetch_factor=prefetch_factor,
                           persistent_workers=persistent_workers, pin_memory=pin_memory)
