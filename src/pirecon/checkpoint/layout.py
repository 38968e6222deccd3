"""File names inside checkpoint folders, and telling a folder's kind without reading tensors.

A pirecon folder:
  config.json            {"format": "pirecon", "model": {the fields the weights' shapes follow},
                          "policy": {...}, ["recon": {...}], ...}
  model.safetensors      the weights under our key names (absent in a LoRA training checkpoint)
  norm_stats.json        openpi-format normalisation statistics
  data_info.json         cameras, dims and normalisation mode, to rebuild the preprocessing
  tokenizer.model|.json  a copy of the tokenizer
A training checkpoint adds (see `pirecon.checkpoint.training`):
  adapter/               PEFT adapter (adapter_config.json, adapter_model.safetensors)   (LoRA)
  trainable.safetensors  the non-LoRA trainable weights (heads, vision, ...)             (LoRA)
  ema.safetensors        EMA of the trainable weights                                 (optional)
  training_state.pt      optimizer, scheduler, RNG states, data position, step
and a sharded one (`--checkpoint_format=dcp` under FSDP, see `pirecon.checkpoint.sharded`) holds
torch.distributed.checkpoint folders instead of the weight files and the optimizer state:
  pytorch_model_fsdp_0/  optimizer_0/  ema_0/
LeRobot and openpi folders: see `pirecon.checkpoint.folder_info`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from safetensors import SafetensorError, safe_open

from pirecon.checkpoint import keys
from pirecon.configs.parse import load_json
from pirecon.errors import CheckpointError

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "pirecon"
FORMATS = ("pirecon", "lerobot", "openpi")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORM_STATS = "norm_stats.json"
DATA_INFO = "data_info.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
# Training checkpoints
CHECKPOINTS = "checkpoints"
LAST = "last"
TRAINING_STATE = "training_state.pt"
EMA_FILE = "ema.safetensors"
TRAINABLE_FILE = "trainable.safetensors"
ADAPTER_DIR = "adapter"
# Sharded checkpoints (torch.distributed.checkpoint folders; accelerate's and LeRobot's names)
DCP_MODEL_DIR = "pytorch_model_fsdp_0"
DCP_OPTIMIZER_DIR = "optimizer_0"
DCP_EMA_DIR = "ema_0"
DCP_METADATA = ".metadata"  # written last, once every rank's shards are in place
# LeRobot's folder of the model in a checkpoint; ours holds the run's train_config.json there, so
# LeRobot's resume idiom (--config_path=OUT/checkpoints/last/pretrained_model/train_config.json) works.
PRETRAINED_MODEL = "pretrained_model"
TRAIN_CONFIG = "train_config.json"
TRAINING_MARKERS = (TRAINING_STATE, ADAPTER_DIR, TRAINABLE_FILE, DCP_MODEL_DIR)  # "export before uploading"
# LeRobot and openpi side files
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
ASSETS_DIR = "assets"


def read_config(folder: Path) -> dict:
    """A folder's config.json; its absence is a CheckpointError naming the folder."""
    return load_json(Path(folder) / CONFIG_FILE, CheckpointError,
                     missing=f"no {CONFIG_FILE}; expected the config written beside {WEIGHTS_FILE}")


def holds_dcp(folder: Path, name: str) -> bool:
    """The checkpoint folder holds the complete torch.distributed.checkpoint folder `name`."""
    return (Path(folder) / name / DCP_METADATA).is_file()


def is_lora(folder: Path) -> bool:
    """A training checkpoint holding an adapter over a frozen base (no model.safetensors)."""
    return (Path(folder) / CONFIG_FILE).is_file() and bool(read_config(folder).get("peft"))


@contextlib.contextmanager
def open_safetensors(path: str | Path, device: str | torch.device = "cpu") -> Iterator[SafetensorsFile]:
    """A safetensors file to read tensor by tensor (`keys()`, `metadata()`, `get_tensor(name)`); a
    missing, truncated or foreign file is one CheckpointError naming it.

    Every tensor comes in memory of its own (plain reads, no memory map): a loaded model never
    keeps the file mapped, nor its pages counted in the process's memory, and reading converts
    one tensor at a time."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        handle = safe_open(str(path), framework="pt")  # validates the header and the offsets
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]}); it is damaged "
                              f"or truncated (a copy cut short?)") from None
    with handle as checked, open(path, "rb", buffering=0) as raw:
        yield SafetensorsFile(path, checked, raw, device)


def read_safetensors(path: str | Path) -> dict:
    """Every tensor of a safetensors file (CheckpointError naming a damaged file)."""
    with open_safetensors(path) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # torch's names
# Bytes per read call. Reads go through one reused buffer whose pages are mapped already: the
# kernel's copy into the never-touched pages of a fresh tensor faults them in one by one and ran
# 4-5x slower than copying out of the buffer (6.7 GB file from the page cache: 20.7 s vs 4.4 s).
_BOUNCE = 64 << 20


class SafetensorsFile:
    """An open safetensors file whose tensors are read into memory each of them owns."""

    def __init__(self, path: Path, checked, raw, device: str | torch.device):
        self.path, self._checked, self._raw, self.device = path, checked, raw, device
        if hasattr(os, "posix_fadvise"):  # read ahead: the tensors are read front to back
            os.posix_fadvise(raw.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        length = int.from_bytes(os.pread(raw.fileno(), 8, 0), "little")
        self._header = json.loads(os.pread(raw.fileno(), length, 8))
        self._data_start = 8 + length
        self._bounce = None  # the read buffer (uint8), made on the first read

    def keys(self) -> list[str]:
        return self._checked.keys()

    def metadata(self) -> dict | None:
        return self._checked.metadata()

    def get_tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `name`, in `dtype` when given (converted right after reading)."""
        import torch  # lazy: telling a folder's kind needs no torch

        entry = self._header[name]
        stored = _DTYPES.get(entry["dtype"])
        if stored is None or sys.byteorder != "little":  # exotic: safetensors' own copy
            tensor = self._checked.get_tensor(name).clone()
        else:
            tensor = torch.empty(entry["shape"], dtype=getattr(torch, stored))
            begin, end = (self._data_start + offset for offset in entry["data_offsets"])
            self._read_into(tensor.reshape(-1).view(torch.uint8), begin, end)
        if dtype is not None:
            tensor = tensor.to(dtype)
        return tensor.to(self.device)

    def _read_into(self, out, begin: int, end: int) -> None:
        """Bytes [begin, end) of the file into the uint8 tensor `out`, through the read buffer."""
        import torch  # lazy: telling a folder's kind needs no torch

        if self._bounce is None:
            size = min(_BOUNCE, max(1, os.fstat(self._raw.fileno()).st_size - self._data_start))
            self._bounce = torch.zeros(size, dtype=torch.uint8)  # zeros: its pages are mapped now
        view = memoryview(self._bounce.numpy())
        done, total = 0, end - begin
        while done < total:
            got = os.preadv(self._raw.fileno(), [view[:min(total - done, len(view))]], begin + done)
            if got <= 0:
                raise CheckpointError(f"{self.path}: ends inside a tensor; it is damaged or truncated "
                                      f"(a copy cut short?)")
            out[done:done + got].copy_(self._bounce[:got])
            done += got


# Sizes of the weight and state files of a training checkpoint, written last at save and checked at
# load: a truncated file or one deleted by an interrupted prune is named instead of failing later.
# (JSON files are read with their own checks; the EMA file may be removed to save space.)
MANIFEST = "manifest.json"
PAYLOAD = (".safetensors", ".pt", ".bin", ".distcp")
OPTIONAL = (EMA_FILE,)
OPTIONAL_DIRS = (DCP_EMA_DIR,)


def write_manifest(folder: Path) -> None:
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(Path(folder).rglob("*"))
             if p.is_file() and (p.suffix in PAYLOAD or p.name == DCP_METADATA)}
    (Path(folder) / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")


def verify_manifest(folder: Path) -> None:
    """Every file the manifest lists is there with its size (folders without a manifest pass)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return
    listed = load_json(path, CheckpointError).get("files") or {}
    missing = [name for name in listed if not (Path(folder) / name).is_file() and not _optional(name)]
    if missing:
        raise CheckpointError(f"{folder}: the checkpoint is incomplete ({missing[:3]} missing; damaged, or cut short "
                              f"by an interrupted prune); use another checkpoint, e.g. checkpoints/last")
    for name, size in listed.items():
        if _optional(name) and not (Path(folder) / name).is_file():
            continue
        actual = (Path(folder) / name).stat().st_size
        if actual != size:
            raise CheckpointError(f"{Path(folder) / name}: {actual} bytes, the checkpoint's manifest says {size}: "
                                  f"the file is damaged or truncated")


def _optional(name: str) -> bool:
    """A file that may be removed to save space (the EMA weights)."""
    return name in OPTIONAL or name.split("/")[0] in OPTIONAL_DIRS


def is_training_checkpoint(folder: Path) -> bool:
    return any((Path(folder) / name).exists() for name in TRAINING_MARKERS)


def folder_format(folder: str | Path) -> str:
    """"pirecon", "openpi" or "lerobot", from config.json and the tensor names (no tensor is read)."""
    folder = Path(folder)
    config_json = read_config(folder)
    if config_json.get("format") == FORMAT_NAME:
        return FORMAT_NAME  # also LoRA checkpoints, which hold no model.safetensors
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}; expected a pirecon, openpi or LeRobot checkpoint folder")
    with open_safetensors(weights) as f:
        return detect_format(config_json, list(f.keys()), f.metadata() or {})


def detect_format(config_json: dict, tensor_names: list[str], metadata: dict) -> str:
    if config_json.get("format") == FORMAT_NAME or metadata.get("format") == FORMAT_NAME:
        return FORMAT_NAME
    found = keys.foreign_layout(tensor_names)
    if found is None:
        raise CheckpointError(f"cannot tell the checkpoint layout: keys such as {tensor_names[:3]} are neither "
                              f"pirecon, {keys.LAYOUT_HINT}")
    return found


def step_folders(output_dir: str | Path) -> list[Path]:
    """The step checkpoints (`OUT/checkpoints/{step:06d}`) of a training output folder, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit()),
                  key=lambda p: int(p.name))


def last_checkpoint(output_dir: str | Path) -> Path | None:
    link = Path(output_dir) / CHECKPOINTS / LAST
    return link.resolve() if link.exists() else None


def resolve_checkpoint(path: str | Path, flag: str = "--policy.path") -> Path:
    """A checkpoint folder, or a training output folder's `checkpoints/last`."""
    folder = Path(path).expanduser()
    if (folder / CONFIG_FILE).is_file():
        return folder.resolve()
    last = folder / CHECKPOINTS / LAST
    if (last / CONFIG_FILE).is_file():
        return last.resolve()
    if not folder.exists():
        raise CheckpointError(f"{flag}={path}: folder not found")
    raise CheckpointError(f"{flag}={path}: no {CONFIG_FILE} there (nor in {CHECKPOINTS}/{LAST}); expected a "
                          f"pirecon checkpoint folder such as OUT/{CHECKPOINTS}/{LAST}")


def require_ema(folder: Path) -> Path:
    """The EMA weights of a checkpoint, or the error `--use_ema=true` gets without them."""
    path = Path(folder) / EMA_FILE
    if holds_dcp(folder, DCP_EMA_DIR) and not path.is_file():
        return Path(folder) / DCP_EMA_DIR
    if not path.is_file():
        raise CheckpointError(f"--use_ema=true but {folder} holds no {EMA_FILE}; train with --ema_decay=... to "
                              f"keep EMA weights, or use the raw weights with --use_ema=false")
    return path


def training_dataset(folder: Path, follow_export: bool = True) -> dict:
    """The `dataset` settings of the run that wrote a checkpoint ({} when unknown); with
    `follow_export`, an exported folder is followed back to the checkpoint it came from."""
    for _ in range(4):
        try:
            data = json.loads((Path(folder) / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        dataset = (data.get("train") or {}).get("dataset") or {}
        if dataset or not follow_export or not data.get("exported_from"):
            return dataset
        folder = Path(data["exported_from"])
    return {}
