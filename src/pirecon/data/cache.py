"""Keep samples in RAM after their first read (`--dataset.cache_in_memory=true`).

For small datasets (the simulator's, a few demos) video decoding and image resizing dominate a
training step; the training loader caches each sample after preprocessing (which is
deterministic), so every frame is decoded and resized once. Each DataLoader worker holds its own
cache, so prefer `--num_workers=0` with it.
"""

from __future__ import annotations

from torch.utils.data import Dataset


class InMemoryDataset(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = self._cache.get(index)
        if sample is None:
            sample = self._cache[index] = self.dataset[index]
        return dict(sample)

    def __getattr__(self, name):  # fps, camera_keys, stats, ... of the wrapped dataset
        if name in ("dataset", "_cache"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
