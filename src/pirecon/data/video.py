"""Video decoding by timestamp and H.264 / AV1 encoding with PyAV.

Decoding follows LeRobot's rule: the frame whose presentation time (pts) is closest to the
requested timestamp, within a tolerance. `FrameDecoder` keeps a few containers open per process
and remembers where each decoder stands, so sequential requests decode forward without seeking
and random requests seek to the keyframe before the timestamp (the container's keyframe index
tells which is cheaper), then decode forward only up to the frame asked for.

Encoding writes yuv420p H.264 (libx264; mpeg4 if this FFmpeg build lacks it) or AV1 (libsvtav1,
LeRobot's default) with a short GOP and no B-frames, like LeRobot's recorder, so that random
access stays cheap and per-episode files can be concatenated by remuxing packets
(`VideoConcatenator`) without re-encoding.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pirecon.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says about the first video stream of a file."""

    frames: int  # frame count from the header (0 when the container does not store it)
    fps: float  # average frame rate
    duration: float  # seconds, from the stream (or container) duration
    start: float  # pts of the first frame, seconds
    width: int
    height: int
    codec: str
    pix_fmt: str | None


def _open(path: Path):
    """Open a video file for reading; every failure becomes a DatasetError naming the file."""
    if not path.is_file():
        raise DatasetError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise DatasetError(f"{path}: cannot open video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise DatasetError(f"{path}: expected a video stream, found none")
    return container


def probe_video(path: str | Path) -> VideoInfo:
    """Header facts of a video file (no decoding)."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 0
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        ctx = stream.codec_context
        return VideoInfo(frames=int(stream.frames or 0), fps=float(rate), duration=duration, start=start,
                         width=ctx.width, height=ctx.height, codec=ctx.name,
                         pix_fmt=ctx.pix_fmt)
    finally:
        container.close()


def _rgb(frame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB, converted on one thread. PyAV >= 17 converts with
    as many threads as there are cores by default; where a process cannot start more threads that
    fails now and then with EAGAIN ("Resource temporarily unavailable", PyAV-Org/PyAV#2281, seen
    here mid-training), and at robot-camera sizes the extra threads buy nothing."""
    return frame.to_ndarray(format="rgb24", threads=1)


def read_all_frames(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode every frame in order. Returns frames (N, H, W, 3) uint8 and their pts (N,) seconds."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(_rgb(frame))
            times.append(float(frame.time))
    except av.error.FFmpegError as exc:
        raise DatasetError(f"{path}: cannot decode video ({exc})") from None
    finally:
        container.close()
    if not frames:
        raise DatasetError(f"{path}: the video holds no frames")
    return np.stack(frames), np.asarray(times)


class _OpenVideo:
    """One open container plus the decoder position (the last decoded frame)."""

    def __init__(self, path: Path, cache: _FrameCache):
        self.path = path
        self.cache = cache
        self.container = _open(path)
        self.stream = self.container.streams.video[0]
        # One decoding thread: seeks stay cheap, parallelism comes from DataLoader workers, and
        # there are no decoder threads whose locks a forked child could inherit.
        self.stream.codec_context.thread_count = 1
        rate = self.stream.average_rate or self.stream.guessed_rate or 30
        self.period = 1.0 / float(rate)  # seconds per frame
        self.step = self.period  # smallest gap seen between consecutive frames (the period at CFR)
        self.frames = None  # iterator of decoded frames from the current position
        self.last = None  # last decoded av.VideoFrame, or None after a seek
        self.last_t = -1.0
        # Keyframe times from the container's index (mp4 reads its sync-sample table on open):
        # they tell whether a later request is reached sooner by decoding on or by seeking.
        tb = float(self.stream.time_base)
        self.keys = np.asarray([e.timestamp * tb for e in self.stream.index_entries if e.is_keyframe])
        self.gop = None  # largest keyframe spacing seen while decoding on (seconds)
        self._last_key_t = None  # last keyframe decoded since the last seek

    def reachable(self, t: float, target: float) -> bool:
        """Whether decoding on from the current position reaches time `t` with no more frames
        than a seek to `target` would: the seek would land on a keyframe no later than the frame
        after the current one."""
        if self.last is None or t <= self.last_t:
            return False
        if len(self.keys):
            i = int(np.searchsorted(self.keys, target, side="right")) - 1  # where the seek lands
            return i < 0 or self.keys[i] < self.last_t + 1.5 * self.step
        return t - self.last_t <= (self.gop or 10 * self.period)  # no index: the GOP seen so far

    def seek(self, t: float) -> None:
        """Position the decoder at the last keyframe at or before time `t` (seconds)."""
        self.container.seek(max(0, int(t / self.stream.time_base)), stream=self.stream, backward=True,
                            any_frame=False)
        self.frames = iter(self.container.decode(self.stream))
        self.last, self.last_t = None, -1.0
        self._last_key_t = None  # keyframes before and after a seek are not one GOP apart

    def advance(self) -> bool:
        """Decode the next frame into `last`; False at the end of the stream."""
        try:
            frame = next(self.frames)
        except StopIteration:
            return False
        except av.error.FFmpegError as exc:
            raise DatasetError(f"{self.path}: cannot decode video ({exc})") from None
        t = float(frame.time)
        if self.last is not None and t > self.last_t:
            self.step = min(self.step, t - self.last_t)
        self.last, self.last_t = frame, t
        self.cache.put(self.path, self.slot(t), frame)
        if frame.key_frame:  # learn the keyframe spacing (used when the container has no index)
            if self._last_key_t is not None and t > self._last_key_t:
                self.gop = max(self.gop or 0.0, t - self._last_key_t)
            self._last_key_t = t
        return True

    def slot(self, t: float) -> int:
        """Frame number that a time falls on, at the nominal frame rate."""
        return int(round(t / self.period))

    def close(self) -> None:
        self.container.close()


class _FrameCache:
    """LRU of decoded frames (still in the video's pixel format) bounded by bytes.

    Seeking decodes every frame from the keyframe up to the target; keeping them makes later
    requests in the same stretch of video nearly free.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: OrderedDict[tuple[Path, int], tuple[object, int]] = OrderedDict()

    def put(self, path: Path, slot: int, frame) -> None:
        if self.max_bytes <= 0 or (path, slot) in self._frames:
            return
        size = sum(plane.buffer_size for plane in frame.planes)
        self._frames[(path, slot)] = (frame, size)
        self.bytes += size
        while self.bytes > self.max_bytes and self._frames:
            self.bytes -= self._frames.popitem(last=False)[1][1]

    def get(self, path: Path, slot: int):
        item = self._frames.get((path, slot))
        if item is None:
            return None
        self._frames.move_to_end((path, slot))
        return item[0]

    def clear(self) -> None:
        self._frames.clear()
        self.bytes = 0


_INHERITED: list = []  # decoder state a forked process inherited; never touched, never freed
_DECODERS: weakref.WeakSet = weakref.WeakSet()  # every FrameDecoder of this process


def _after_fork_in_child() -> None:
    for decoder in list(_DECODERS):
        decoder._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class FrameDecoder:
    """Per-process cache of open videos; `frame_at` returns the frame closest to a timestamp.

    Picklable: open containers are never pickled. A forked child (DataLoader worker) sets aside
    every container and frame it inherited, even of decoders about to be garbage collected:
    file offsets are shared across fork, and freeing FFmpeg state whose locks another thread
    of the parent held could hang. It opens its own containers instead.
    """

    def __init__(self, max_open: int = 16, cache_mb: float = 256):
        self.max_open = max_open
        self.cache_mb = cache_mb
        self._open: OrderedDict[Path, _OpenVideo] = OrderedDict()
        self._cache = _FrameCache(int(cache_mb * 2**20))
        self._pid = os.getpid()
        self.requests = self.decoded = self.seeks = 0  # counters: frame_at calls, frames decoded, seeks
        _DECODERS.add(self)

    def _forget(self) -> None:
        """Drop (without freeing) all decoder state: called in a freshly forked child."""
        _INHERITED.append((self._open, self._cache))
        self._open = OrderedDict()
        self._cache = _FrameCache(self._cache.max_bytes)
        self._pid = os.getpid()

    def __getstate__(self):
        return {"max_open": self.max_open, "cache_mb": self.cache_mb}

    def __setstate__(self, state):
        self.__init__(**state)

    def _get(self, path: Path) -> _OpenVideo:
        if self._pid != os.getpid():  # forked without the at-fork hook having run
            self._forget()
        video = self._open.get(path)
        if video is None:
            video = _OpenVideo(path, self._cache)
            self._open[path] = video
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(path)
        return video

    def frame_at(self, path: str | Path, t: float, tolerance: float, end: float | None = None) -> np.ndarray:
        """The frame closest to time `t` (seconds), as (H, W, 3) uint8.

        `end` excludes frames at or after it (the next episode in a concatenated file). A time
        after the last frame but within that frame's display period maps to the last frame.
        Raises DatasetError naming the file and timestamp when no frame is within `tolerance`.

        Work per request: a frame decoded earlier (cache, or where the decoder stands) costs
        nothing; a time ahead with no keyframe in between decodes on from where the decoder
        stands; anything else seeks to the last keyframe before `t`. Decoding stops at the first
        frame that is surely the closest, and only the returned frame is converted to RGB.
        """
        video = self._get(Path(path))
        self.requests += 1
        near = min(video.period / 2, tolerance)  # closer than half a frame: the nearest frame
        cached = self._cache.get(video.path, video.slot(t))
        if cached is not None and abs(float(cached.time) - t) <= near and (end is None or cached.time < end):
            return _rgb(cached)
        if video.last is not None and abs(video.last_t - t) <= near and (end is None or video.last_t < end):
            return _rgb(video.last)
        # A frame no further than `sure` before t is the closest one: the next frame lies at least
        # `step` after it, so farther from t (ties go to the earlier frame, as in LeRobot).
        sure = min(near, video.step / 2)
        # Seek to just under `sure` past t: a keyframe landed on after t is then the closest frame
        # itself. At the end of a segment the frame before t may be the answer: seek to t there.
        target = t + sure - 1e-6
        target = target if end is None or target < end - 1e-6 else t
        if not video.reachable(t, target):
            video.seek(target)
            self.seeks += 1
        prev = video.last if video.last is not None and video.last_t <= t else None
        nxt = None
        while True:
            if video.last is not None and video.last_t > t:
                nxt = video.last
                break
            if prev is not None and t - video.last_t <= sure and (end is None or video.last_t < end - 1e-6):
                break
            if not video.advance():
                break
            self.decoded += 1
            if video.last_t <= t:
                prev = video.last
        if nxt is not None and end is not None and float(nxt.time) >= end - 1e-6:
            nxt = None  # belongs to the next segment of a concatenated file
        candidates = [f for f in (prev, nxt) if f is not None]
        if not candidates:
            raise DatasetError(f"{video.path}: no frame near timestamp {t:.4f} s (the video is empty "
                               f"or the timestamp is before its first frame)")
        best = min(candidates, key=lambda f: abs(float(f.time) - t))
        gap = abs(float(best.time) - t)
        last_frame_shown = nxt is None and prev is not None and 0 <= t - float(prev.time) <= video.period + 1e-6
        if gap > tolerance and not last_frame_shown:
            raise DatasetError(
                f"{video.path}: no frame within {tolerance:.4f} s of timestamp {t:.4f} s "
                f"(nearest frame at {float(best.time):.4f} s)")
        return _rgb(best)

    def close(self) -> None:
        for video in self._open.values():
            video.close()
        self._open.clear()
        self._cache.clear()


def frame_decoder(backend: str = "pyav", cache_mb: float = 256):
    """The decoder of `--dataset.video_backend`: a `FrameDecoder` (PyAV) or a
    `pirecon.data.video_torchcodec.TorchCodecDecoder` (a ConfigError when torchcodec is missing)."""
    if backend == "torchcodec":
        from pirecon.data.video_torchcodec import TorchCodecDecoder  # lazy: optional
        return TorchCodecDecoder()
    if backend != "pyav":
        raise ConfigError(f"--dataset.video_backend={backend!r}: expected pyav or torchcodec")
    return FrameDecoder(cache_mb=cache_mb)


# ---------------------------------------------------------------------------------------------
# Encoding


CODEC_ALIASES = {"h264": "libx264", "av1": "libsvtav1"}  # LeRobot's names -> FFmpeg encoders
DEFAULT_CRF = {"libx264": 23, "libsvtav1": 30}  # LeRobot records AV1 at crf 30


def pick_codec(codec: str = "auto") -> str:
    """'libx264' when this FFmpeg build has it, else 'mpeg4'; an explicit name is checked.

    'av1' means libsvtav1 (LeRobot's default encoder), 'h264' means libx264."""
    if codec == "auto":
        for name in ("libx264", "mpeg4"):
            if name in av.codecs_available:
                return name
        raise DatasetError("no H.264 (libx264) or mpeg4 encoder in this PyAV/FFmpeg build")
    name = CODEC_ALIASES.get(codec, codec)
    if name not in av.codecs_available:
        raise DatasetError(f"video codec {codec!r} is not available in this PyAV/FFmpeg build")
    return name


def codec_label(encoder: str) -> str:
    """The codec name LeRobot's info.json stores for an encoder ('h264', 'av1', ...)."""
    return {"libx264": "h264", "libsvtav1": "av1"}.get(encoder, encoder)


def fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001000)


class VideoEncoder:
    """Write RGB frames (H, W, 3) uint8 into one yuv420p mp4 at a constant frame rate."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int, codec: str = "auto",
                 crf: int | None = None, gop: int = 2):
        if width % 2 or height % 2:
            raise DatasetError(f"{path}: yuv420p video needs an even width and height, got {width}x{height}")
        self.path = Path(path)
        self.codec = pick_codec(codec)
        self.width, self.height = width, height
        self.frames = 0
        self._container = av.open(str(self.path), "w")
        crf = DEFAULT_CRF.get(self.codec, 23) if crf is None else crf
        if self.codec == "libx264":
            options = {"crf": str(crf), "g": str(gop), "bf": "0", "preset": "veryfast"}
        elif self.codec == "libsvtav1":
            # As LeRobot's recorder (g=2, crf 30); AV1 has no B-frame reordering (pts == dts), so
            # episodes concatenate by remuxing. SVT-AV1 prints its banner unless SVT_LOG says not to.
            os.environ.setdefault("SVT_LOG", "1")
            options = {"crf": str(crf), "g": str(gop)}
        else:
            options = {"g": str(gop), "bf": "0", "b": str(max(200_000, int(width * height * fps * 0.5)))}
        self._stream = self._container.add_stream(self.codec, rate=fps_fraction(fps), options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"

    def add(self, image: np.ndarray) -> None:
        """Append one frame (H, W, 3) uint8."""
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise DatasetError(f"{self.path}: expected a ({self.height}, {self.width}, 3) uint8 frame, "
                               f"got {image.shape} {image.dtype}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame = frame.reformat(format="yuv420p", threads=1)  # one thread, as in `_rgb`
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and write the file trailer."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


class VideoConcatenator:
    """Append whole mp4 files (same codec and size, no B-frames) into one file by remuxing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._container = av.open(str(self.path), "w")
        self._stream = None
        self._offset = 0  # in the output stream's time base units (set from the first source)
        self._time_base = None

    def append(self, source: str | Path) -> float:
        """Copy every packet of `source` after what is already written; returns its duration (s)."""
        src = _open(Path(source))
        try:
            in_stream = src.streams.video[0]
            if self._stream is None:
                # opaque: copy the codec parameters as they are; rebuilding the codec by name fails
                # when the input was opened with a decoder-only codec such as libdav1d (AV1).
                self._stream = self._container.add_stream_from_template(in_stream, opaque=True)
                self._time_base = in_stream.time_base
            end = self._offset
            for packet in src.demux(in_stream):
                if packet.dts is None:  # the demuxer's empty flush packet
                    continue
                shift = int(round(self._offset * self._time_base / in_stream.time_base))
                packet.pts += shift
                packet.dts += shift
                stop = float((packet.pts + (packet.duration or 0)) * in_stream.time_base)
                end = max(end, int(round(stop / self._time_base)))
                packet.stream = self._stream
                self._container.mux(packet)
        finally:
            src.close()
        duration = float((end - self._offset) * self._time_base)
        self._offset = end
        return duration

    @property
    def duration(self) -> float:
        """Seconds written so far."""
        return float(self._offset * self._time_base) if self._time_base is not None else 0.0

    def close(self) -> None:
        self._container.close()
