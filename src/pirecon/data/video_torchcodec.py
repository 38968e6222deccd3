"""`--dataset.video_backend=torchcodec`: decode video frames with torchcodec (LeRobot's default).

`TorchCodecDecoder.frame_at` follows the same rule as the PyAV `FrameDecoder`: the frame whose
presentation time is closest to the requested time (ties to the earlier frame), none at or after
`end` (the next episode in a concatenated file), a time past the last frame within its display
period maps to the last frame, and no frame within `tolerance` is a DatasetError naming the file.
The frame is found as LeRobot finds it, by index (time x frame rate, the container's index giving
the frame), and its neighbours are decoded only when it is not surely the closest.

torchcodec is optional: `pip install 'pirecon[torchcodec]'` (torchcodec 0.13 for torch 2.13),
and it loads the FFmpeg libraries of the system (4 to 8; Debian/Ubuntu: the libavcodec,
libavformat, libavutil, libswscale, libswresample, libavdevice and libavfilter packages, or
`ffmpeg`). `available()` says whether it imports; `TorchCodecDecoder()` raises a ConfigError
naming the flag and what is missing when it does not.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pirecon.errors import ConfigError, DatasetError

FLAG = "--dataset.video_backend=torchcodec"


def _import_error() -> str | None:
    """None when torchcodec imports with its FFmpeg libraries, else why it does not."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  # lazy: optional, probed
    except ImportError as exc:
        return f"torchcodec is not installed ({exc})"
    except (OSError, RuntimeError) as exc:  # torchcodec present, FFmpeg libraries missing or too old
        return f"torchcodec cannot load the FFmpeg libraries ({str(exc).splitlines()[0]})"
    return None


def available() -> bool:
    return _import_error() is None


class _OpenVideo:
    def __init__(self, path: Path):
        from torchcodec.decoders import VideoDecoder  # lazy: optional (checked by TorchCodecDecoder)

        if not path.is_file():
            raise DatasetError(f"{path}: video file not found")
        try:
            # Approximate seeking (as LeRobot): the index comes from the header, no scan at open.
            # One FFmpeg thread: parallelism comes from DataLoader workers, as with PyAV.
            self.decoder = VideoDecoder(str(path), dimension_order="NHWC", num_ffmpeg_threads=1,
                                        seek_mode="approximate")
        except (RuntimeError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot open video ({str(exc).splitlines()[0]})") from None
        meta = self.decoder.metadata
        self.fps = float(meta.average_fps or 30.0)
        self.period = 1.0 / self.fps
        self.start = float(meta.begin_stream_seconds or 0.0)
        self.count = len(self.decoder)


class TorchCodecDecoder:
    """Per-process cache of open torchcodec decoders; `frame_at` as `FrameDecoder.frame_at`.

    Picklable (open decoders are never pickled); a forked child (DataLoader worker) opens its own.
    """

    def __init__(self, max_open: int = 16):
        error = _import_error()
        if error:
            raise ConfigError(f"{FLAG}: {error}; install it with pip install 'pirecon[torchcodec]' and the "
                              f"system's FFmpeg libraries (apt-get install ffmpeg), or use "
                              f"--dataset.video_backend=pyav")
        self.max_open = max_open
        self._open: OrderedDict[Path, _OpenVideo] = OrderedDict()
        self._pid = os.getpid()
        # counters: frame_at calls, frames asked of torchcodec (which decodes from the keyframe
        # before each on its own, unseen here)
        self.requests = self.fetched = 0

    def __getstate__(self):
        return {"max_open": self.max_open}

    def __setstate__(self, state):
        self.__init__(**state)

    def _get(self, path: Path) -> _OpenVideo:
        if self._pid != os.getpid():  # a forked child: never use the parent's decoders
            self._open, self._pid = OrderedDict(), os.getpid()
        video = self._open.get(path)
        if video is None:
            video = self._open[path] = _OpenVideo(path)
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(path)
        return video

    def _frames(self, video: _OpenVideo, path: Path, indices: list[int]) -> dict[int, tuple[float, np.ndarray]]:
        """index -> (pts in seconds, (H, W, 3) uint8) for the frames at `indices` (ascending)."""
        if not indices:
            return {}
        try:
            batch = video.decoder.get_frames_at(indices=indices)
        except (RuntimeError, IndexError) as exc:
            raise DatasetError(f"{path}: cannot decode video ({str(exc).splitlines()[0]})") from None
        self.fetched += len(indices)
        return {i: (float(pts), frame.numpy()) for i, pts, frame in zip(indices, batch.pts_seconds.tolist(), batch.data)}

    def frame_at(self, path: str | Path, t: float, tolerance: float, end: float | None = None) -> np.ndarray:
        """The frame closest to time `t` (seconds), as (H, W, 3) uint8 (see the module docstring)."""
        path = Path(path)
        video = self._get(path)
        self.requests += 1
        last = video.count - 1
        if last < 0:
            raise DatasetError(f"{path}: no frame near timestamp {t:.4f} s (the video is empty)")

        def in_segment(pts: float) -> bool:  # frames at or after `end` belong to the next episode
            return end is None or pts < end - 1e-6

        index = min(max(round((t - video.start) * video.fps), 0), last)
        found = self._frames(video, path, [index])
        pts = found[index][0]
        # Closer than half a frame (and in the segment) is surely the closest at a constant rate.
        if not (abs(pts - t) < video.period / 2 - 1e-6 and in_segment(pts)):
            found.update(self._frames(video, path, [i for i in (index - 1, index + 1) if 0 <= i <= last]))
        candidates = [(i, p, f) for i, (p, f) in found.items() if in_segment(p)]
        if not candidates:
            raise DatasetError(f"{path}: no frame near timestamp {t:.4f} s (the timestamp is before the "
                               f"video's first frame or past its segment)")
        best, pts, frame = min(candidates, key=lambda c: (abs(c[1] - t), c[1]))  # ties: the earlier frame
        if abs(pts - t) > tolerance:
            # A time past the last frame (of the video or the segment), within its display period, shows it.
            after = best + 1
            if after <= last and after not in found:
                found.update(self._frames(video, path, [after]))
            last_shown = (after > last or not in_segment(found[after][0])) and 0 <= t - pts <= video.period + 1e-6
            if not last_shown:
                raise DatasetError(f"{path}: no frame within {tolerance:.4f} s of timestamp {t:.4f} s "
                                   f"(nearest frame at {pts:.4f} s)")
        return frame

    def close(self) -> None:
        self._open.clear()
