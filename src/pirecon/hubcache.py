"""Hugging Face Hub ids resolved to local folders through the Hugging Face cache.

- `--policy.pretrained_path` and `--dataset.repo_id` (without `--dataset.root`) accept a Hub id,
  `org/name` or `org/name@revision`. A value naming an existing local folder is always that
  folder. Otherwise a Hub id goes through `huggingface_hub.snapshot_download` into the Hugging Face
  cache (`HF_HUB_CACHE`, else `HF_HOME/hub`). With `HF_HUB_OFFLINE=1` only that cache is read
  (`local_files_only=True`): a missing entry is one error naming the id and the local-folder flag.

Uploads live in `pirecon.checkpoint.upload`. Nothing here talks to the Hub unless asked.

`huggingface_hub` reads `HF_HUB_OFFLINE` and the cache paths once, when it is imported; the
functions here read the environment when they are called and pass the result explicitly.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants

from pirecon.errors import ConfigError, HubError

PRETRAINED_FLAG = "--policy.pretrained_path"
DATASET_FLAG = "--dataset.repo_id"
_TRUE = ("1", "ON", "YES", "TRUE")
# One name of a Hub repo id: letters, digits, "_", "-", "."; no leading/trailing "-" or ".".
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[A-Za-z0-9_.][A-Za-z0-9_./-]*))?")


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
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    """The Hugging Face Hub cache: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE or HF_HOME/hub, read now."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
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


def cached_snapshot(value: str, repo_type: str = "model") -> Path | None:
    """The cached snapshot folder of the Hub id `value`, read from the local cache only (never
    downloaded); None when `value` is no Hub id or the cache does not hold it."""
    from huggingface_hub import snapshot_download  # lazy: 0.2 s to import

    hub_id = parse_hub_id(value)
    if hub_id is None:
        return None
    try:
        return Path(snapshot_download(hub_id.repo_id, repo_type=repo_type, revision=hub_id.revision,
                                      cache_dir=str(cache_dir()), local_files_only=True))
    except Exception:  # huggingface_hub raises several types for a missing or partial entry
        return None


def snapshot(hub_id: HubId, repo_type: str, flag: str, local_hint: str) -> Path:
    """The cached snapshot folder of `hub_id`, downloaded first unless HF_HUB_OFFLINE is set.

    Offline, only the cache is read: nothing is retried and a missing entry raises at once."""
    from huggingface_hub import snapshot_download  # lazy: 0.2 s to import

    offline, cache = is_offline(), cache_dir()
    if not offline:
        print(f"pirecon: fetching {repo_type} {hub_id} from the Hugging Face Hub into {cache} (set HF_HUB_OFFLINE=1 "
              f"to use only the local cache)", file=sys.stderr)
    try:
        folder = snapshot_download(hub_id.repo_id, repo_type=repo_type, revision=hub_id.revision,
                                   cache_dir=str(cache), local_files_only=offline)
    except Exception as exc:  # huggingface_hub raises OSError, ValueError and HTTP-library errors alike
        reason = first_line(exc)
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
