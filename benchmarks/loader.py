"""Loader throughput on AV1 video (issue #15): samples/s of a shuffled `make_dataloader` over
`open_dataset` (action chunk 50, batch 8, pi0 preprocessing to 224x224) at 0 and 2 workers, and
frames decoded per frame asked for, side by side in one run for three ways to decode a frame:

    pyav      a plain PyAV decode by timestamp (containers kept open; seek to the keyframe before
              the frame, decode on to it, convert it to RGB): the floor any PyAV loader pays,
              without frame choice rules, cache or position reuse
    old       `FrameDecoder` as it was before the fix (read from git, revision --old_rev)
    new       `FrameDecoder` of this checkout
    torchcodec  `--dataset.video_backend=torchcodec` (where torchcodec is installed)
    lerobot   with --lerobot_python=PYTHON: LeRobot's own LeRobotDataset (video_backend=torchcodec,
              delta_timestamps for the action chunk) in a plain torch DataLoader with the same batch
              size, shuffling and workers, run by that interpreter (a venv where LeRobot is installed),
              in a fresh process per worker count. It stops at LeRobot's raw batch (frames at their
              stored size, no resize, normalisation or tokens: its processor pipeline runs later, in
              the training loop), so its row is the lighter work.

    .venv/bin/python benchmarks/loader.py [--root /tmp/pirecon-loader-bench] [--batches 25]
        [--lerobot_python /path/to/lerobot-venv/bin/python]

The loader runs per-sample work on one torch thread (busy cores made torch's intra-op threads
~30x slower on these small tensors); --torch_threads sets the main process's count otherwise
(default: torch's). The old decoder is slow enough on this dataset (a seek
rarely happens, so requests decode on through long stretches of video) that its measurement stops
after --seconds.

The dataset (LeRobot v3.0, 2 cameras, 224x224 AV1 yuv420p via libsvtav1 at crf 30 with a keyframe
every --gop frames (2, as LeRobot's recorder), --episodes x --frames concatenated into one file per
camera) is written once into --root and reused. Prints a table.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import av
import numpy as np
import torch

from pirecon.configs.policy import PolicyConfig
from pirecon.data.lerobot import open_dataset
from pirecon.data.loader import make_dataloader
from pirecon.data import video_torchcodec
from pirecon.data.normalize import normalizer_from_dataset
from pirecon.data.tokenizer import load_tokenizer, train_tiny_tokenizer
from pirecon.data.transforms import Preprocessor
from pirecon.data.writer import LeRobotWriter, demo_image

REPO = Path(__file__).resolve().parents[1]
CAMERAS = ("top", "wrist")


# ---------------------------------------------------------------------------------------------
# The dataset


def bench_image(texture: np.ndarray, episode: int, frame: int, camera: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the demo gradients over a noise texture that drifts with the frame,
    so that frames carry detail and motion (decoding costs more than on flat gradients)."""
    dy, dx = (frame * 3 + episode * 7) % size, (frame * 2 + camera * 11) % size
    noise = texture[dy:dy + size, dx:dx + size].astype(np.uint16)
    return ((demo_image(episode, frame, camera, size).astype(np.uint16) + noise) // 2).astype(np.uint8)


def write_dataset(root: Path, episodes: int, frames: int, size: int, gop: int, fps: int = 10) -> Path:
    features = {f"observation.images.{cam}": {"dtype": "video", "shape": [size, size, 3],
                                              "names": ["height", "width", "channels"]} for cam in CAMERAS}
    features["observation.state"] = {"dtype": "float32", "shape": [8], "names": None}
    features["action"] = {"dtype": "float32", "shape": [7], "names": None}
    texture = np.random.default_rng(0).integers(0, 256, (2 * size, 2 * size, 3), dtype=np.uint8)
    start = time.perf_counter()
    with LeRobotWriter(root, fps, features, robot_type="bench", vcodec="av1", gop=gop) as writer:
        for e in range(episodes):
            for i in range(frames):
                frame = {f"observation.images.{cam}": bench_image(texture, e, i, c, size)
                         for c, cam in enumerate(CAMERAS)}
                frame["observation.state"] = np.sin(np.arange(8) + 0.1 * i + e).astype(np.float32)
                frame["action"] = np.cos(np.arange(7) + 0.1 * i + e).astype(np.float32)
                writer.add_frame(frame, task=f"task {e % 3}")
            writer.save_episode()
    print(f"wrote {root} in {time.perf_counter() - start:.0f} s", flush=True)
    return root


# ---------------------------------------------------------------------------------------------
# The decoders compared


class PlainPyAV:
    """Decode by timestamp the plain way: seek to the keyframe at or before the nearest frame (to
    just under half a frame past the time), decode on to the first frame within half a frame of
    the time (the nearest frame at a constant frame rate), convert it to RGB."""

    def __init__(self):
        self._open, self._pid = {}, os.getpid()
        self.requests = self.decoded = 0

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def frame_at(self, path, t: float, tolerance: float, end: float | None = None) -> np.ndarray:
        if self._pid != os.getpid():  # a forked worker: never use the parent's containers
            self._open, self._pid = {}, os.getpid()
        if path not in self._open:
            container = av.open(str(path))
            container.streams.video[0].codec_context.thread_count = 1
            self._open[path] = container
        container = self._open[path]
        stream = container.streams.video[0]
        half = 0.5 / float(stream.average_rate)
        self.requests += 1
        target = t + half - 1e-6
        container.seek(max(0, int(target / stream.time_base)), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            self.decoded += 1
            if frame.time >= t - half:
                return frame.to_ndarray(format="rgb24", threads=1)
        raise RuntimeError(f"{path}: no frame at {t}")


def load_old_video_module(rev: str):
    """pirecon.data.video as of git revision `rev`, with a counter of decoded frames."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/pirecon/data/video.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="pirecon-old-video-")) / "pirecon_old_video.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pirecon_old_video", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pirecon_old_video"] = module  # picklable by name
    spec.loader.exec_module(module)
    module.COUNTS = {"decoded": 0, "requests": 0}
    advance, frame_at = module._OpenVideo.advance, module.FrameDecoder.frame_at

    def counted_advance(self):
        ok = advance(self)
        module.COUNTS["decoded"] += ok
        return ok

    def counted_frame_at(self, *args, **kwargs):
        module.COUNTS["requests"] += 1
        return frame_at(self, *args, **kwargs)

    module._OpenVideo.advance, module.FrameDecoder.frame_at = counted_advance, counted_frame_at
    return module


# ---------------------------------------------------------------------------------------------
# LeRobot, in its own interpreter

LEROBOT_CHILD = """
import gc, json, multiprocessing, sys, time
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
root, chunk, batch, batches, seconds, workers = sys.argv[1:7]
chunk, batch, batches, seconds, workers = int(chunk), int(batch), int(batches), float(seconds), int(workers)
fps = LeRobotDataset("bench/local", root=root, video_backend="torchcodec").fps
dataset = LeRobotDataset("bench/local", root=root, video_backend="torchcodec",
                         delta_timestamps={"action": [i / fps for i in range(chunk)]})
loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                     generator=torch.Generator().manual_seed(0))
data = iter(loader)
last = next(data)
start, done = time.perf_counter(), 0
while done < batches and (done == 0 or time.perf_counter() - start < seconds):
    last = next(data)
    done += 1
rate = done * batch / (time.perf_counter() - start)
print(json.dumps({"rate": rate, "batches": done, "images": list(last["observation.images.top"].shape)}))
"""

# LeRobot's dataset modules import torchvision at module level (transforms.ToTensor for image
# columns, the torchvision video backend), though its torchcodec path on a video dataset calls
# none of it; where torchvision does not import (PyPI's beside a CPU torch 2.13 wheel) the child
# gets this stand-in, which raises if anything is called.
TORCHVISION_STANDIN = {
    "torchvision/__init__.py": "from . import transforms  # noqa: F401\n",
    "torchvision/transforms/__init__.py": (
        "class ToTensor:\n"
        "    def __call__(self, *args, **kwargs):\n"
        "        raise RuntimeError('benchmark stand-in for torchvision: ToTensor was called')\n"),
}


def torchvision_standin() -> Path:
    """A folder holding TORCHVISION_STANDIN, written once per benchmark process."""
    global _STANDIN
    if _STANDIN is None:
        _STANDIN = Path(tempfile.mkdtemp(prefix="pirecon-torchvision-standin-"))
        for name, text in TORCHVISION_STANDIN.items():
            (_STANDIN / name).parent.mkdir(parents=True, exist_ok=True)
            (_STANDIN / name).write_text(text)
    return _STANDIN


_STANDIN: Path | None = None


def lerobot_throughput(python: str, root: Path, chunk: int, batch_size: int, batches: int, seconds: float,
                       workers: int) -> tuple[float, int]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    probe = subprocess.run([python, "-c", "import torchvision"], capture_output=True, env=env)
    if probe.returncode != 0:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(torchvision_standin()), env.get("PYTHONPATH")]))
    out = subprocess.run([python, "-c", LEROBOT_CHILD, str(root), str(chunk), str(batch_size), str(batches),
                          str(seconds), str(workers)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"LeRobot's loader failed ({python}):\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["rate"], result["batches"]


# ---------------------------------------------------------------------------------------------
# Measuring


def throughput(dataset, preprocessor, workers: int, batches: int, batch_size: int, seconds: float) -> tuple[float, int]:
    """(samples/s, batches timed): `batches` batches after a warm-up one, or fewer when they take
    longer than `seconds` (at least one)."""
    loader = make_dataloader(dataset, preprocessor, batch_size, num_workers=workers, seed=0, shuffle=True)
    data = iter(loader)
    next(data)  # worker start-up and first file opens are not part of the steady state
    start = time.perf_counter()
    done = 0
    while done < batches and (done == 0 or time.perf_counter() - start < seconds):
        next(data)
        done += 1
    rate = done * batch_size / (time.perf_counter() - start)
    del data, loader  # stops the workers; wait until they are gone, lest they slow the next run
    gc.collect()
    deadline = time.perf_counter() + 60
    while multiprocessing.active_children() and time.perf_counter() < deadline:
        time.sleep(0.1)
    return rate, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "pirecon-loader-bench",
                        help="folder for the cached dataset (written on first use)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--frames", type=int, default=200, help="frames per episode")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--gop", type=int, default=2, help="keyframe interval of the AV1 encoding")
    parser.add_argument("--batches", type=int, default=25, help="timed batches per measurement (at most)")
    parser.add_argument("--seconds", type=float, default=10,
                        help="stop timing a measurement after the batch that passes this many seconds")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=50, help="action horizon")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--decoders", nargs="+", default=["pyav", "old", "new", "torchcodec"],
                        choices=["pyav", "old", "new", "torchcodec"])
    parser.add_argument("--torch_threads", type=int, default=0, help="torch threads of the main process (0: torch's default)")
    parser.add_argument("--old_rev", default="2f1d94b", help="git revision of the FrameDecoder before the fix")
    parser.add_argument("--lerobot_python", default=None,
                        help="an interpreter with LeRobot installed: adds LeRobot's own loader as a row")
    args = parser.parse_args()

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    root = args.root / f"av1-{args.episodes}x{args.frames}-{args.size}px-g{args.gop}"
    if not (root / "meta" / "info.json").is_file():
        write_dataset(root, args.episodes, args.frames, args.size, args.gop)
    makers = {"pyav": PlainPyAV, "new": None}
    labels = {"pyav": "plain PyAV (seek + decode on)", "new": "FrameDecoder (this checkout)"}
    if "torchcodec" in args.decoders:
        if video_torchcodec.available():
            makers["torchcodec"] = video_torchcodec.TorchCodecDecoder
            labels["torchcodec"] = "torchcodec (--dataset.video_backend)"
        else:
            print(f"(torchcodec skipped: {video_torchcodec._import_error()})")
    if "old" in args.decoders:
        try:
            old = load_old_video_module(args.old_rev)
            makers["old"] = old.FrameDecoder
            labels["old"] = f"FrameDecoder before ({args.old_rev})"
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            print(f"(old decoder skipped: {exc})")
    decoders = [d for d in args.decoders if d in makers]

    tmp = Path(tempfile.mkdtemp(prefix="pirecon-loader-bench-"))
    tokenizer = load_tokenizer(train_tiny_tokenizer([f"task {i}" for i in range(3)], tmp / "tok.model"))
    config = PolicyConfig(type="pi0", variant="tiny", image_resolution=224, chunk_size=args.chunk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = open_dataset(root, args.chunk)
    preprocessor = Preprocessor(config, tokenizer, normalizer_from_dataset(probe, "pi0"), camera_keys=probe.camera_keys)
    print(f"{root}: {probe.num_episodes} episodes, {probe.num_frames} frames, cameras {probe.camera_keys}, "
          f"AV1 {args.size}x{args.size} gop {args.gop}; chunk {args.chunk}, batch {args.batch_size}, shuffled, "
          f"torch threads {torch.get_num_threads()}",
          flush=True)

    rows = []
    for workers in args.workers:
        for name in decoders:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = open_dataset(root, args.chunk)
            if makers[name] is not None:
                dataset._decoder = makers[name]()
            if name == "old":
                old.COUNTS.update(decoded=0, requests=0)
            rate, done = throughput(dataset, preprocessor, workers, args.batches, args.batch_size, args.seconds)
            per_frame = ""
            counts = old.COUNTS if name == "old" else vars(dataset._decoder)
            if workers == 0 and "decoded" in counts:  # counters live in the main process only without workers
                per_frame = f"{counts['decoded'] / max(1, counts['requests']):.2f}"
            rows.append((labels[name], workers, rate, done, per_frame))
            print(f"  {labels[name]}, {workers} workers: {rate:.1f} samples/s over {done} batches, "
                  f"{per_frame or '-'} frames decoded per frame asked", flush=True)
        if args.lerobot_python:
            label = "LeRobot's LeRobotDataset (torchcodec)"
            rate, done = lerobot_throughput(args.lerobot_python, root, args.chunk, args.batch_size, args.batches,
                                            args.seconds, workers)
            rows.append((label, workers, rate, done, ""))
            print(f"  {label}, {workers} workers: {rate:.1f} samples/s over {done} batches", flush=True)

    width = max(len(r[0]) for r in rows)
    print(f"\n{'decoder':<{width}}  workers  samples/s  batches timed  frames decoded per frame asked")
    for label, workers, rate, done, per_frame in rows:
        print(f"{label:<{width}}  {workers:>7}  {rate:>9.1f}  {done:>13}  {per_frame or '-':>6}")
    print("(frames decoded per frame asked: counted at 0 workers, where the decoder lives in this process; "
          "torchcodec decodes out of sight)")


if __name__ == "__main__":
    main()
