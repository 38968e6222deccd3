"""FrameDecoder: random access returns exactly the frames of an in-order decode, and decodes
only the frames from the keyframe before a request up to the requested one."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import pyarrow.parquet as pq

from pirecon.data.video import FrameDecoder, read_all_frames
from pirecon.data.writer import write_demo_dataset

LENGTHS = (9, 14, 7, 11)  # odd lengths: episodes start on both even and odd frames of the file
FPS = 10
CODECS = ["libx264", pytest.param("av1", marks=pytest.mark.skipif(
    "libsvtav1" not in av.codecs_available or "libdav1d" not in av.codecs_available,
    reason="no AV1 encoder/decoder in this PyAV build"))]


@pytest.fixture(scope="module", params=CODECS)
def video(request, tmp_path_factory):
    """(file, segments, gop) of a v3.0 camera whose episodes are concatenated into one mp4;
    segments: per episode (from_timestamp, to_timestamp, length)."""
    gop = 2 if request.param == "av1" else 4
    root = write_demo_dataset(tmp_path_factory.mktemp(request.param) / "ds", "v3.0", LENGTHS, cameras=("top",),
                              image_size=64, vcodec=request.param, gop=gop)
    assert json.loads((root / "meta/info.json").read_text())["features"]["observation.images.top"]["info"][
        "video.codec"] == ("av1" if request.param == "av1" else "h264")
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    key = "videos/observation.images.top"
    segments = [(e[f"{key}/from_timestamp"], e[f"{key}/to_timestamp"], e["length"]) for e in episodes]
    return root / "videos/observation.images.top/chunk-000/file-000.mp4", segments, gop


def reference(frames, times, t, start, end):
    """The frame with the closest pts among the episode's frames (the first on a tie)."""
    inside = np.flatnonzero((times >= start - 1e-6) & (times < end - 1e-6))
    return frames[inside[np.argmin(np.abs(times[inside] - t))]]


def requests(segments, rng, n, jitter=0.45):
    """n (t, end) pairs: random frames of random episodes, off their pts by up to `jitter` frames,
    plus every episode's first and last frame and a time just past the last frame."""
    out = []
    for _ in range(n):
        start, end, length = segments[rng.integers(len(segments))]
        out.append((start + (rng.integers(length) + rng.uniform(-jitter, jitter)) / FPS, end))
    for start, end, length in segments:
        out += [(start, end), (start + (length - 1) / FPS, end), (start + (length - 0.9) / FPS, end)]
    return [out[i] for i in rng.permutation(len(out))]


@pytest.mark.parametrize("cache_mb", [0, 256])
def test_random_requests_match_in_order_decode(video, cache_mb):
    """Shuffled, backward and repeated requests across the episode boundaries of a concatenated
    file return the frames of a full in-order decode, bit for bit."""
    path, segments, _ = video
    frames, times = read_all_frames(path)
    assert len(frames) == sum(LENGTHS)
    rng = np.random.default_rng(0)
    decoder = FrameDecoder(cache_mb=cache_mb)
    todo = requests(segments, rng, 150)
    todo += todo[::-1][:20] + todo[:5]  # backward and repeated
    for t, end in todo:
        start = next(s for s, e, _ in segments if e == end)
        got = decoder.frame_at(path, t, tolerance=0.5 / FPS, end=end)
        np.testing.assert_array_equal(got, reference(frames, times, t, start, end), err_msg=f"t={t:.4f}")


def test_forward_requests_match_in_order_decode(video):
    """Every frame in order, then every other frame forward: decoding on from where the decoder
    stands gives the same frames as seeking."""
    path, segments, _ = video
    frames, times = read_all_frames(path)
    decoder = FrameDecoder(cache_mb=0)
    for step in (1, 2, 3):
        for i in range(0, len(times), step):
            end = next(e for s, e, _ in segments if s - 1e-6 <= times[i] < e - 1e-6)
            np.testing.assert_array_equal(decoder.frame_at(path, times[i] + 0.01, 0.05, end), frames[i])


def test_without_a_container_index_frames_are_the_same(video):
    """A container without keyframe index (the decoder then learns the GOP) returns the same frames."""
    path, segments, _ = video
    frames, times = read_all_frames(path)
    decoder = FrameDecoder(cache_mb=0)
    decoder.frame_at(path, 0.0, 0.05)
    decoder._open[path].keys = np.zeros(0)
    for t, end in requests(segments, np.random.default_rng(1), 100):
        start = next(s for s, e, _ in segments if e == end)
        np.testing.assert_array_equal(decoder.frame_at(path, t, 0.05, end), reference(frames, times, t, start, end))


def test_random_requests_decode_at_most_one_gop(video):
    """A random request decodes from the keyframe before it up to the frame asked for: at most
    `gop` frames, (gop + 1) / 2 on average; in-order requests decode one frame each, seek once."""
    path, segments, gop = video
    decoder = FrameDecoder(cache_mb=0)
    per_request = []
    for t, end in requests(segments, np.random.default_rng(2), 300, jitter=0.4):
        before = decoder.decoded
        decoder.frame_at(path, t, 0.05, end)
        per_request.append(decoder.decoded - before)
    assert max(per_request) <= gop
    assert np.mean(per_request) <= (gop + 1) / 2 + 0.25, np.mean(per_request)
    assert decoder.requests == len(per_request)

    decoder = FrameDecoder(cache_mb=0)
    _, times = read_all_frames(path)
    for t in times:
        decoder.frame_at(path, t, 0.05)
    assert decoder.decoded == len(times) and decoder.seeks == 1
    decoder.frame_at(path, times[-1], 0.05)  # where the decoder stands: nothing to decode
    assert decoder.decoded == len(times)
