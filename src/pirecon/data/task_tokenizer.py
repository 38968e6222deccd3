"""A tiny tokenizer built from a dataset's task texts, and `pirecon tokenizer`.

The tiny model variants have a vocabulary of 1024, far too small for PaliGemma's / Gemma's
tokenizer, so they take a small SentencePiece model (`train_tiny_tokenizer`) trained on the prompts
they will see: every task text of the dataset's `meta/tasks.*` (all of them, whatever
`--dataset.episodes` selects), cleaned as prompts are (`clean_text`). Letters, digits and
punctuation are always covered, so the Pi0.5 prompt template and its state bins, and unseen words,
never hit <unk>. The same dataset always gives a byte-identical file.

- `build_task_tokenizer(root, output)`: build and write one (`pirecon demo` uses it).
- `tokenizer_for_model(...)`: what `pirecon train` does without `--policy.tokenizer_path`.
- `pirecon tokenizer --dataset.root=DIR --output=FILE [--vocab_size=N]` does it explicitly.
"""

from __future__ import annotations

from pathlib import Path

from dataclasses import dataclass

from pirecon.configs.data import TokenizerConfig
from pirecon.configs.parse import format_help, parse_flags, wants_help
from pirecon.data.layout import Layout, dataset_root
from pirecon.data.tokenizer import (
    GEMMA_VOCAB_SIZE,
    TOKENIZER_FLAG,
    load_tokenizer,
    tiny_vocab_needed,
    train_tiny_tokenizer,
)
from pirecon.data.transforms import clean_text
from pirecon.errors import ConfigError

# The file name `pirecon train` writes into its output folder.
TOKENIZER_FILE = "tokenizer.model"


@dataclass(frozen=True)
class TaskTokenizer:
    """A tokenizer built from a dataset's task texts."""

    path: Path
    dataset: Path
    texts: tuple[str, ...]  # the cleaned task texts it was trained on, sorted
    vocab_size: int

    def summary(self) -> str:
        return (f"tokenizer: built from {len(self.texts)} task texts of {self.dataset} -> {self.path} "
                f"(vocab {self.vocab_size})")


def task_texts(root: str | Path) -> tuple[str, ...]:
    """Every task text of the dataset in `root`, cleaned as prompts are, without repeats, sorted."""
    return tuple(sorted({clean_text(task) for task in Layout(root).tasks.values()}))


def build_task_tokenizer(root: str | Path, output: str | Path, vocab_size: int | None = None) -> TaskTokenizer:
    """Train a tiny tokenizer on the task texts of the dataset in `root` and write it to `output`.

    `vocab_size` (`--vocab_size`) bounds the vocabulary; None: 256, or what the texts need when that
    is more.
    """
    root = Path(root)
    texts = task_texts(root)
    needed = tiny_vocab_needed(texts)
    if vocab_size is not None and vocab_size < needed:
        raise ConfigError(f"--vocab_size={vocab_size}: too small for the {len(texts)} task texts of {root}; "
                          f"expected at least {needed}")
    path = train_tiny_tokenizer(texts, output, vocab_size)
    return TaskTokenizer(path, root, texts, load_tokenizer(path).vocab_size)


def tokenizer_for_model(root: str | Path, output_dir: str | Path, model_vocab_size: int) -> TaskTokenizer:
    """The tokenizer of a training run given none: for a model whose vocabulary no released
    tokenizer fits (the tiny variants), one built from the dataset's task texts into
    OUTPUT_DIR/tokenizer.model; for a full-size model a ConfigError saying what to pass."""
    if model_vocab_size >= GEMMA_VOCAB_SIZE:
        raise ConfigError(
            f"{TOKENIZER_FLAG}: not given; expected PaliGemma's (or Gemma's) SentencePiece tokenizer, as a .model "
            f"file (e.g. paligemma_tokenizer.model from openpi's assets) or a folder holding tokenizer.model "
            f"(e.g. a local copy of google/paligemma-3b-pt-224); pirecon never downloads one")
    texts = task_texts(root)
    needed = tiny_vocab_needed(texts)
    if needed > model_vocab_size:
        raise ConfigError(
            f"{TOKENIZER_FLAG}: not given, and a tokenizer for the {len(texts)} task texts of {root} needs "
            f"{needed} tokens, more than the model's vocabulary of {model_vocab_size}; pass a tokenizer that "
            f"fits or choose a larger --policy.variant")
    return build_task_tokenizer(root, Path(output_dir) / TOKENIZER_FILE)


# ---------------------------------------------------------------------------------------------
# `pirecon tokenizer`

HELP = """A tiny SentencePiece tokenizer for the tiny model variants (--policy.variant=tiny), trained on
every task text of a LeRobot dataset (meta/tasks.*). The same dataset always gives the same file.
`pirecon train` builds one itself when a tiny model is given no --policy.tokenizer_path."""


def run(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help("tokenizer", HELP, TokenizerConfig), end="")
        return 0
    cfg = parse_flags(argv, TokenizerConfig)
    if not cfg.output:
        raise ConfigError("--output: expected the file to write the tokenizer to (e.g. --output=tokenizer.model)")
    built = build_task_tokenizer(dataset_root(cfg.dataset), cfg.output, cfg.vocab_size)
    print(built.summary())
    return 0
