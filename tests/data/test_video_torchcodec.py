"""--dataset.video_backend=torchcodec: the frames of PyAV's in-order decode, by the same rules."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pirecon.configs.data import DatasetConfig
from pirecon.data import video_torchcodec
from pirecon.data.lerobot import open_dataset, open_from_config
from pirecon.data.video import FrameDecoder, frame_decoder, read_all_frames
from pirecon.data.video_torchcodec import TorchCodecDecoder
from pirecon.data.writer import write_demo_dataset
from pirecon.errors import ConfigError, DatasetError
from tests.data.test_video import FPS, LENGTHS, reference, requests, video  # noqa: F401 (the fixture)

needs_torchcodec = pytest.mark.skipif(not video_torchcodec.available(),
                                      reason=f"{video_torchcodec._import_error()} (pip install 'pirecon[torchcodec]' "
                                             f"and the system's FFmpeg libraries)")


@needs_torchcodec
def test_random_requests_give_pyavs_frames(video):  # noqa: F811
    """Shuffled, backward and repeated requests across the episode boundaries of a concatenated
    file (H.264 and AV1): the frames of PyAV's in-order decode, bit for bit."""
    path, segments, _ = video
    frames, times = read_all_frames(path)
    decoder = TorchCodecDecoder()
    todo = requests(segments, np.random.default_rng(0), 150)
    todo += todo[::-1][:20] + todo[:5]
    for t, end in todo:
        start = next(s for s, e, _ in segments if e == end)
        got = decoder.frame_at(path, t, tolerance=0.5 / FPS, end=end)
        np.testing.assert_array_equal(got, reference(frames, times, t, start, end), err_msg=f"t={t:.4f}")
    assert decoder.requests == len(todo)
    assert decoder.fetched <= 1.2 * len(todo)  # the frame asked for; neighbours only when in doubt


@needs_torchcodec
def test_out_of_range_times_fail_as_with_pyav(video):  # noqa: F811
    path, segments, _ = video
    start, end, length = segments[1]
    for decoder in (FrameDecoder(cache_mb=0), TorchCodecDecoder()):
        # just past the segment's last frame, within its display period: the last frame
        last = decoder.frame_at(path, start + (length - 0.6) / FPS, 0.01, end)
        np.testing.assert_array_equal(last, decoder.frame_at(path, start + (length - 1) / FPS, 0.01, end))
        with pytest.raises(DatasetError, match=r"no frame within 0.0100 s of timestamp"):
            decoder.frame_at(path, start + 0.3 / FPS, 0.01, end)  # between two frames, tolerance too small
    with pytest.raises(DatasetError, match=r"file-000.mp4: no frame near timestamp .* past its segment"):
        TorchCodecDecoder().frame_at(path, start + (length + 3) / FPS, 0.01, end)  # in the next episode


@needs_torchcodec
def test_the_dataset_reads_the_same_samples_with_either_backend(tmp_path):
    root = write_demo_dataset(tmp_path / "ds", "v3.0", (5, 7), cameras=("top", "wrist"), image_size=32)
    pyav = open_dataset(root, 4)
    codec = open_from_config(DatasetConfig(root=str(root), video_backend="torchcodec"), 4)
    assert isinstance(codec._decoder, TorchCodecDecoder)
    clone = pickle.loads(pickle.dumps(codec))  # how DataLoader workers get it
    for i in (0, 6, 3, 11, 4):
        a, b, c = pyav[i], codec[i], clone[i]
        for key in pyav.video_keys:
            assert np.array_equal(a[key].numpy(), b[key].numpy()) and np.array_equal(a[key].numpy(), c[key].numpy())


def test_a_missing_torchcodec_is_one_error_naming_the_flag(monkeypatch, tmp_path):
    monkeypatch.setattr(video_torchcodec, "_import_error", lambda: "torchcodec is not installed (No module named x)")
    with pytest.raises(ConfigError, match=r"--dataset.video_backend=torchcodec: torchcodec is not installed .*"
                                          r"pip install 'pirecon\[torchcodec\]'.*--dataset.video_backend=pyav"):
        frame_decoder("torchcodec")
    root = write_demo_dataset(tmp_path / "ds", "v3.0", (3,), cameras=("top",), image_size=32)
    with pytest.raises(ConfigError, match=r"--dataset.video_backend=torchcodec"):
        open_dataset(root, 4, video_backend="torchcodec")
    assert isinstance(frame_decoder("pyav"), FrameDecoder)
