"""ResumableLoader: seeded epochs, exact resume with and without workers."""

from __future__ import annotations

import itertools

import pytest
import torch

from pirecon.batch import Batch
from pirecon.configs.policy import PolicyConfig
from pirecon.data.loader import make_dataloader
from pirecon.data.tokenizer import load_tokenizer, train_tiny_tokenizer
from pirecon.data.transforms import Preprocessor
from pirecon.errors import DatasetError

CHUNK = 2


class TinyDataset:
    """Map-style, picklable, deterministic: sample i carries its index in `observation.sample_id`."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {
            "observation.images.front": torch.rand(3, 28, 28, generator=g),
            "observation.state": torch.randn(3, generator=g),
            "action": torch.randn(CHUNK, 2, generator=g),
            "action_is_pad": torch.zeros(CHUNK, dtype=torch.bool),
            "observation.sample_id": torch.tensor([float(i)]),
            "task": f"task {i % 3}",
        }


@pytest.fixture(scope="module")
def preprocessor(tmp_path_factory):
    path = train_tiny_tokenizer(["task 0", "task 1", "task 2"], tmp_path_factory.mktemp("tok") / "t.model", 100)
    cfg = PolicyConfig(variant="tiny", image_resolution=28, chunk_size=CHUNK, n_action_steps=CHUNK)
    return Preprocessor(cfg, load_tokenizer(path))


def ids(batch: Batch) -> list[int]:
    return batch.extras["observation.sample_id"][:, 0].long().tolist()


def test_epochs_follow_seeded_permutations(preprocessor):
    loader = make_dataloader(TinyDataset(10), preprocessor, batch_size=3, seed=7)
    assert len(loader) == 3  # drop_last: 10 // 3
    for epoch in range(2):
        seen = [i for batch in loader for i in ids(batch)]
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(7 + epoch)).tolist()[:9]
        assert seen == expected
    assert loader.state_dict() == {"epoch": 2, "batches_consumed": 0, "seed": 7}


def test_no_shuffle_and_partial_last_batch(preprocessor):
    loader = make_dataloader(TinyDataset(5), preprocessor, batch_size=2, shuffle=False, drop_last=False)
    assert [ids(b) for b in loader] == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_matches_uninterrupted_run(preprocessor, num_workers):
    dataset, total = TinyDataset(11), 9  # 3 batches per epoch: run across 3 epochs
    reference = [ids(b) for b in itertools.islice(
        make_dataloader(dataset, preprocessor, batch_size=3, seed=1).forever(), total)]
    for stop in (2, 3, 4):
        first = make_dataloader(dataset, preprocessor, batch_size=3, seed=1, num_workers=num_workers)
        head = [ids(b) for b in itertools.islice(first.forever(), stop)]
        state = first.state_dict()
        assert state["epoch"] * 3 + state["batches_consumed"] == stop
        resumed = make_dataloader(dataset, preprocessor, batch_size=3, seed=999, num_workers=num_workers)
        resumed.load_state_dict(state)  # the saved seed wins
        tail = [ids(b) for b in itertools.islice(resumed.forever(), total - stop)]
        assert head + tail == reference, f"stop={stop}"


def test_restore_inside_the_same_loader_replays_position(preprocessor):
    loader = make_dataloader(TinyDataset(12), preprocessor, batch_size=4, seed=3, num_workers=2)
    it = loader.forever()
    next(it)
    saved = loader.state_dict()
    expected = ids(next(it))
    next(it)  # move on (workers have prefetched further)
    loader.load_state_dict(saved)
    assert ids(next(loader.forever())) == expected


def test_batches_are_full_batches(preprocessor):
    loader = make_dataloader(TinyDataset(6), preprocessor, batch_size=3, num_workers=0)
    batch = next(iter(loader))
    batch.validate(preprocessor.config)
    assert batch.actions.shape == (3, CHUNK, preprocessor.config.max_action_dim) and batch.action_dim == 2


def test_errors(preprocessor):
    with pytest.raises(DatasetError, match=r"4 samples, fewer than --batch_size=8"):
        make_dataloader(TinyDataset(4), preprocessor, batch_size=8)
    loader = make_dataloader(TinyDataset(4), preprocessor, batch_size=2)
    with pytest.raises(DatasetError, match="batches_consumed"):
        loader.load_state_dict({"epoch": 1})


def test_the_memory_cache_preprocesses_each_sample_once_and_yields_the_same_batches(preprocessor):
    calls = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, raw):
            calls.append(int(raw["observation.sample_id"][0]))
            return self.inner(raw)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    plain = make_dataloader(TinyDataset(6), preprocessor, batch_size=2, seed=5)
    cached = make_dataloader(TinyDataset(6), Counting(preprocessor), batch_size=2, seed=5, cache_in_memory=True)
    for a, b in zip(itertools.islice(plain.forever(), 9), itertools.islice(cached.forever(), 9)):  # 3 epochs
        assert ids(a) == ids(b)
        assert torch.equal(a.images, b.images) and torch.equal(a.actions, b.actions)
    assert sorted(calls) == list(range(6))
