"""Hugging Face Hub ids for checkpoints and datasets, and `pirecon push CKPT ORG/NAME`.

This module is the only place pirecon talks to the Hub, and only when the user asks:

- `--policy.pretrained_path` and `--dataset.repo_id` (without `--dataset.root`) accept a Hub id,
  `org/name` or `org/name@revision`. A value naming an existing local folder is always that
  folder. Otherwise a Hub id goes through `huggingface_hub.snapshot_download` into the Hugging Face
  cache (`HF_HUB_CACHE`, else `HF_HOME/hub`). With `HF_HUB_OFFLINE=1` only that cache is read
  (`local_files_only=True`): a missing entry is one error naming the id and the local-folder flag.
- `--policy.push_to_hub=true --policy.repo_id=org/name` uploads the final checkpoint of a run
  (rank 0); `pirecon push CKPT REPO_ID [--private] [--revision=BRANCH] [--use_ema]` does the same
  for any checkpoint folder. A training checkpoint is exported first (LoRA merged, no optimizer
  state); a folder that already is a stand-alone model is uploaded as it is.

`huggingface_hub` reads `HF_HUB_OFFLINE` and the cache paths once, when it is imported; the
functions here read the environment when they are called and pass the result explicitly.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pirecon.errors import CheckpointError, ConfigError, HubError

PRETRAINED_FLAG = "--policy.pretrained_path"
DATASET_FLAG = "--dataset.repo_id"
_TRUE = ("1", "ON", "YES", "TRUE")
# One name of a Hub repo id: letters, digits, "_", "-", "."; no leading/trailing "-" or ".".
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[A-Za-z0-9_.][A-Za-z0-9_./-]*))?")
# Files of a training checkpoint that mean "export before uploading" (see pirecon.train.checkpoint).
_TRAINING_MARKERS = ("training_state.pt", "adapter", "trainable.safetensors")


@dataclass(frozen=True)
class HubId:
    repo_id: str  # "org/name"
    revision: str | None = None  # branch, tag or commit; None: the default branch

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_id(value: str) -> HubId | None:
    """`org/name` or `org/name@revision` as a HubId; None for anything else (e.g. a path)."""
    match = _HUB_ID.fullmatch(value.strip())
    if match is None or "--" in match["repo"] or ".." in match["repo"]:
        return None
    return HubId(match["repo"], match["revision"])


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, or as huggingface_hub saw it at import
    (it then refuses every request anyway)."""
    if any(os.environ.get(name, "").strip().upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    """The Hugging Face Hub cache: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE or HF_HOME/hub, read now."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


# ---------------------------------------------------------------------------------------------
# Hub ids -> local folders


def resolve_pretrained(value: str) -> Path:
    """The local folder for `--policy.pretrained_path`: the folder itself, or a Hub model snapshot.

    A value that is neither an existing folder nor a Hub id comes back as a path, for the
    checkpoint reader to report as missing."""
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    hub_id = parse_hub_id(value)
    if hub_id is None:
        return path
    return snapshot(hub_id, "model", PRETRAINED_FLAG, f"{PRETRAINED_FLAG}=/path/to/folder")


def resolve_dataset(repo_id: str) -> Path:
    """The local folder for `--dataset.repo_id` when `--dataset.root` is not given and there is no
    `$HF_LEROBOT_HOME/<repo_id>` copy: the value as a folder, or a Hub dataset snapshot."""
    path = Path(repo_id).expanduser()
    if path.is_dir():
        return path
    hub_id = parse_hub_id(repo_id)
    if hub_id is None:
        home = os.environ.get("HF_LEROBOT_HOME", "~/.cache/huggingface/lerobot")
        raise ConfigError(f"{DATASET_FLAG}={repo_id}: neither a folder nor {home}/{repo_id} exists, and it is not a "
                          f"Hugging Face Hub id (expected org/name or org/name@revision); pass --dataset.root=DIR "
                          f"for a local dataset")
    return snapshot(hub_id, "dataset", DATASET_FLAG, "--dataset.root=DIR")


def snapshot(hub_id: HubId, repo_type: str, flag: str, local_hint: str) -> Path:
    """The cached snapshot folder of `hub_id`, downloaded first unless HF_HUB_OFFLINE is set.

    Offline, only the cache is read: nothing is retried and a missing entry raises at once."""
    from huggingface_hub import snapshot_download

    offline, cache = is_offline(), cache_dir()
    if not offline:
        print(f"pirecon: fetching {repo_type} {hub_id} from the Hugging Face Hub into {cache} (set HF_HUB_OFFLINE=1 "
              f"to use only the local cache)", file=sys.stderr)
    try:
        folder = snapshot_download(hub_id.repo_id, repo_type=repo_type, revision=hub_id.revision,
                                   cache_dir=str(cache), local_files_only=offline)
    except Exception as exc:  # huggingface_hub raises OSError, ValueError and HTTP-library errors alike
        reason = _first_line(exc)
        if offline:
            # A plain miss needs no detail (huggingface_hub's text speaks of its own arguments); a partial
            # snapshot or any other failure does.
            detail = "" if type(exc).__name__ == "LocalEntryNotFoundError" else f" ({reason})"
            raise HubError(
                f"{flag}={hub_id}: not a local folder, and the {repo_type} {hub_id} is not in the Hugging Face cache "
                f"{cache}{detail} while HF_HUB_OFFLINE=1 forbids downloading it; download it once with network "
                f"access (unset HF_HUB_OFFLINE), set HF_HUB_CACHE to the cache that holds it, or pass "
                f"{local_hint}") from None
        raise HubError(
            f"{flag}={hub_id}: not a local folder, and the {repo_type} could not be fetched from the Hugging Face Hub "
            f"({type(exc).__name__}: {reason}); check the id and revision, the network, and a token "
            f"(`hf auth login` or HF_TOKEN) for private or gated repos, or pass {local_hint}") from None
    return Path(folder)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Upload


def check_push_flags(push_to_hub: bool, repo_id: str | None) -> None:
    """Fail before training when `--policy.push_to_hub=true` cannot work."""
    if not push_to_hub:
        return
    if not repo_id:
        raise ConfigError("--policy.push_to_hub=true needs --policy.repo_id=ORG/NAME: the Hugging Face Hub repo "
                          "to upload the final checkpoint to")
    hub_id = parse_hub_id(repo_id)
    if hub_id is None or hub_id.revision:
        raise ConfigError(f"--policy.repo_id={repo_id!r}: expected a Hugging Face Hub repo id such as org/name")
    if is_offline():
        raise HubError(f"--policy.push_to_hub=true but HF_HUB_OFFLINE=1 forbids uploading to {repo_id}; unset "
                       f"HF_HUB_OFFLINE, or train without --policy.push_to_hub and later run "
                       f"`pirecon push OUTPUT_DIR/checkpoints/last {repo_id}`")


def push(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         use_ema: bool = False, commit_message: str | None = None) -> str:
    """Upload a checkpoint folder to the Hub model repo `repo_id` (created if missing); returns its URL.

    A training checkpoint is exported into a temporary folder first (adapters merged, EMA weights
    if `use_ema`). Nothing in `folder` changes, whether the upload works or fails."""
    folder = Path(folder)
    hub_id = parse_hub_id(repo_id)
    if hub_id is None:
        raise ConfigError(f"REPO_ID={repo_id!r}: expected a Hugging Face Hub repo id such as org/name")
    if hub_id.revision:
        if revision and revision != hub_id.revision:
            raise ConfigError(f"REPO_ID={repo_id} names revision {hub_id.revision} but --revision={revision}")
        revision = hub_id.revision
    repo_id = hub_id.repo_id
    retry = f"pirecon push {folder} {repo_id}" + (f" --revision={revision}" if revision else "")
    if is_offline():
        raise HubError(f"cannot push {folder} to {repo_id}: HF_HUB_OFFLINE=1 forbids network access; the folder "
                       f"stays on disk as it is; unset HF_HUB_OFFLINE and run `{retry}`")
    if not folder.is_dir():
        raise CheckpointError(f"CKPT={folder}: checkpoint folder not found (e.g. OUTPUT_DIR/checkpoints/last)")
    from huggingface_hub import HfApi

    with _upload_ready(folder, use_ema) as upload_dir:
        api = HfApi()
        try:
            url = api.create_repo(repo_id, private=private or None, exist_ok=True)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(upload_dir), revision=revision,
                              commit_message=commit_message or f"Upload pirecon checkpoint {folder.resolve().name}")
        except Exception as exc:  # network, auth and HTTP errors come in several types
            raise HubError(f"could not push {folder} to the Hugging Face Hub repo {repo_id} ({type(exc).__name__}: "
                           f"{_first_line(exc)}); the folder stays on disk as it is; once the network and a token "
                           f"with write access (`hf auth login` or HF_TOKEN) are in place, run `{retry}`") from None
    print(f"pirecon: pushed {folder} to {url}" + (f" (revision {revision})" if revision else ""), file=sys.stderr)
    return str(url)


def is_training_checkpoint(folder: Path) -> bool:
    return any((folder / name).exists() for name in _TRAINING_MARKERS)


@contextmanager
def _upload_ready(folder: Path, use_ema: bool) -> Iterator[Path]:
    """`folder` itself when it is a stand-alone model, else a temporary export of it."""
    from pirecon.model.weights import CONFIG_FILE, WEIGHTS_FILE

    if not is_training_checkpoint(folder):
        if use_ema:
            raise ConfigError(f"--use_ema=true: {folder} is not a training checkpoint, so it has no EMA weights")
        missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(f"CKPT={folder}: no {' or '.join(missing)}; expected a training checkpoint "
                                  f"(OUTPUT_DIR/checkpoints/STEP) or an exported model folder")
        yield folder
        return
    from pirecon.train.export import export

    parent = folder.resolve().parent  # same disk as the checkpoint; /tmp may be too small
    where = parent if os.access(parent, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=".pirecon-push-", dir=where) as tmp:
        yield export(folder, Path(tmp) / "model", merge_lora=True, use_ema=use_ema)


# ---------------------------------------------------------------------------------------------
# `pirecon push`

USAGE = """`pirecon push CKPT REPO_ID [--private] [--revision=BRANCH] [--use_ema] [--commit_message=TEXT]`.

Uploads a checkpoint folder to the Hugging Face Hub model repo REPO_ID (org/name), creating the
repo if needed. A training checkpoint (OUTPUT_DIR/checkpoints/STEP or .../last) is exported first:
LoRA adapters merged, no optimizer state; `--use_ema` uploads its EMA weights. Needs network access
and a token with write access (`hf auth login` or HF_TOKEN); fails at once under HF_HUB_OFFLINE=1.
"""


@dataclass(frozen=True)
class PushFlags:
    private: bool = False  # create the Hub repo as private
    revision: str | None = None  # branch to upload to (none: the default branch)
    use_ema: bool = False  # upload the EMA weights
    commit_message: str | None = None  # the Hub commit message (none: a generated one)


def run(argv: list[str]) -> int:
    from pirecon.configs.parse import format_help, parse_flags

    if "--help" in argv or "-h" in argv:
        print(format_help("push", USAGE, PushFlags), end="")
        return 0
    positional, flags = _split_args(argv)
    if len(positional) != 2:
        raise ConfigError(f"expected `pirecon push CKPT REPO_ID` (a checkpoint folder and a Hub repo id such as "
                          f"org/name), got {len(positional)} positional argument(s) {positional}")
    cfg = parse_flags(flags, PushFlags)
    push(positional[0], positional[1], private=cfg.private, revision=cfg.revision, use_ema=cfg.use_ema,
         commit_message=cfg.commit_message)
    return 0


def _split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments and `--flag=value` flags; `--revision BRANCH` (with a space) works too."""
    valued = ("--revision", "--commit_message")
    positional, flags, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in valued and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            flags.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        (flags if arg.startswith("--") else positional).append(arg)
        i += 1
    return positional, flags
