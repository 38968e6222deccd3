"""Prompt tokenizers loaded from local files (no hub access).

`load_tokenizer(path)` accepts:

- a bare SentencePiece model file (e.g. PaliGemma's `paligemma_tokenizer.model`, vocab 256000,
  pad 0 / eos 1 / bos 2);
- a Hugging Face tokenizer folder: `tokenizer.model` is read with `sentencepiece`; a folder with
  only `tokenizer.json` is read with the optional `tokenizers` package, special tokens from
  `tokenizer_config.json` / `special_tokens_map.json` (default `<pad>`, `<eos>`, `<bos>`).

`train_tiny_tokenizer` builds a small deterministic SentencePiece model (Gemma's special ids) for
the tiny models, whose vocabulary is far smaller than Gemma's; `pirecon.data.task_tokenizer`
builds one from a dataset's task texts.
"""

from __future__ import annotations

import abc
import io
import json
import os
import string
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch

from pirecon.errors import ConfigError

TOKENIZER_FLAG = "--policy.tokenizer_path"
# Gemma's special ids; the tiny tokenizer uses the same so that the two are interchangeable.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
# Gemma's tokenizer (PaliGemma's adds 1152 location and segmentation tokens): a model with a smaller
# vocabulary takes no released tokenizer, only a tiny one.
GEMMA_VOCAB_SIZE = 256_000
# The tiny tokenizer's default vocabulary bound (more when the texts need more).
TINY_VOCAB_SIZE = 256
# Punctuation the tiny tokenizer always covers (prompts and the Pi0.5 template use these).
_PUNCTUATION = ".,:;!?'\"-_()/&+"


class Tokenizer(abc.ABC):
    """The small interface the data pipeline needs from a tokenizer."""

    path: Path

    @abc.abstractmethod
    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`, with the BOS id first when `add_bos`."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special tokens dropped)."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def pad_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def bos_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> int: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `.model` file. Picklable (the model proto travels with it)."""

    def __init__(self, path: str | Path):
        import sentencepiece  # lazy: sentencepiece takes 0.1 s to import

        self.path = Path(path)
        self._proto = self.path.read_bytes()
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=self._proto)
        except Exception as exc:  # sentencepiece raises RuntimeError / OSError variants
            raise ConfigError(f"{TOKENIZER_FLAG}={self.path}: not a SentencePiece model ({exc})") from None

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return list(self._sp.encode(text, add_bos=add_bos))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    @property
    def vocab_size(self) -> int:
        return int(self._sp.vocab_size())

    @property
    def pad_id(self) -> int:
        return int(self._sp.pad_id())

    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    def __getstate__(self) -> dict:
        return {"path": self.path, "proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        import sentencepiece  # lazy: sentencepiece takes 0.1 s to import

        self.path, self._proto = state["path"], state["proto"]
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=self._proto)


class HFJsonTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` read with the `tokenizers` package."""

    def __init__(self, folder: str | Path):
        try:
            from tokenizers import Tokenizer as _HFTokenizer  # lazy: only tokenizer.json folders need tokenizers
        except ImportError:
            raise ConfigError(
                f"{TOKENIZER_FLAG}={folder}: the folder has only tokenizer.json, which needs the "
                f"'tokenizers' package (pip install tokenizers), or add a tokenizer.model") from None
        self.path = Path(folder)
        self._json = (self.path / "tokenizer.json").read_text()
        self._tok = _HFTokenizer.from_str(self._json)
        self._special = self._special_ids()

    def _special_ids(self) -> dict[str, int]:
        names = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>"}
        for file in ("special_tokens_map.json", "tokenizer_config.json"):
            config_path = self.path / file
            if not config_path.is_file():
                continue
            config = json.loads(config_path.read_text())
            for kind in names:
                value = config.get(f"{kind}_token")
                if isinstance(value, dict):
                    value = value.get("content")
                if isinstance(value, str):
                    names[kind] = value
        ids = {}
        for kind, token in names.items():
            token_id = self._tok.token_to_id(token)
            if token_id is None and kind != "pad":
                raise ConfigError(
                    f"{TOKENIZER_FLAG}={self.path}: tokenizer.json has no {kind} token {token!r}; name it "
                    f"as {kind}_token in tokenizer_config.json")
            ids[kind] = -1 if token_id is None else int(token_id)
        return ids

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def pad_id(self) -> int:
        return self._special["pad"]

    @property
    def bos_id(self) -> int:
        return self._special["bos"]

    @property
    def eos_id(self) -> int:
        return self._special["eos"]

    def __getstate__(self) -> dict:
        return {"path": self.path, "json": self._json}

    def __setstate__(self, state: dict) -> None:
        from tokenizers import Tokenizer as _HFTokenizer  # lazy: only tokenizer.json folders need tokenizers

        self.path, self._json = state["path"], state["json"]
        self._tok = _HFTokenizer.from_str(self._json)
        self._special = self._special_ids()


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a SentencePiece `.model` file or a Hugging Face tokenizer folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{TOKENIZER_FLAG}={path}: no such file or folder; expected a SentencePiece .model file or a "
            f"folder holding tokenizer.model / tokenizer.json")
    if path.is_file():
        return SentencePieceTokenizer(path)
    if (path / "tokenizer.model").is_file():
        return SentencePieceTokenizer(path / "tokenizer.model")
    if (path / "tokenizer.json").is_file():
        return HFJsonTokenizer(path)
    found = sorted(p.name for p in path.iterdir())[:20]
    raise ConfigError(
        f"{TOKENIZER_FLAG}={path}: the folder holds neither tokenizer.model nor tokenizer.json (found {found})")


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Fail early when the tokenizer can produce ids the model's embedding table does not have."""
    if tokenizer.vocab_size > model_vocab_size:
        raise ConfigError(
            f"{TOKENIZER_FLAG}={tokenizer.path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocabulary (--policy.paligemma_variant) has only {model_vocab_size}; use a tokenizer made for "
            f"this model (`pirecon tokenizer` builds one from a dataset's tasks; `pirecon train` builds it "
            f"itself when {TOKENIZER_FLAG} is not given) or a larger variant")


def pad_tokens(ids: Sequence[int], max_len: int, pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (or cut) `ids` to `max_len`; warns when tokens are cut.

    Returns tokens (max_len,) long and mask (max_len,) bool, True on real tokens.
    """
    ids = list(ids)
    if len(ids) > max_len:
        warnings.warn(
            f"prompt has {len(ids)} tokens, more than the max_token_len of {max_len}; cutting it to {max_len} "
            f"(raise --policy.tokenizer_max_length to keep it whole)", stacklevel=2)
        ids = ids[:max_len]
    n = len(ids)
    tokens = torch.full((max_len,), max(pad_id, 0), dtype=torch.long)
    tokens[:n] = torch.tensor(ids, dtype=torch.long)
    mask = torch.zeros(max_len, dtype=torch.bool)
    mask[:n] = True
    return tokens, mask


def _tiny_corpus(texts: Iterable[str], whole_words: bool) -> tuple[list[str], list[str], int]:
    """The tiny tokenizer's training sentences, its whole-word pieces, and the vocabulary they need."""
    corpus = [t for t in texts if t]
    words = sorted({w for t in corpus for w in t.split() if w.isalpha()}) if whole_words else []
    # Guarantees letters, digits and common punctuation a piece (character_coverage=1.0 keeps them).
    corpus.append(" ".join(string.ascii_letters + string.digits + _PUNCTUATION))
    needed = 4 + 1 + len(set("".join(corpus)) - {"\n"}) + 2 * len(words)  # specials, "\n", characters, words
    return corpus, words, needed


def tiny_vocab_needed(texts: Iterable[str], whole_words: bool = True) -> int:
    """The smallest vocab_size `train_tiny_tokenizer` accepts for `texts`."""
    return _tiny_corpus(texts, whole_words)[2]


def train_tiny_tokenizer(texts: Iterable[str], output_path: str | Path, vocab_size: int | None = None,
                         whole_words: bool = True) -> Path:
    """Train a small SentencePiece (unigram) model on `texts` and write it to `output_path`.

    Deterministic for the same texts and vocab_size. Special ids follow Gemma: pad 0, eos 1,
    bos 2, unk 3. Like Gemma it keeps text as is (identity normalisation, no dummy prefix, digits
    split, "\\n" a token of its own), and ASCII letters, digits and common punctuation are always in the
    vocabulary so that Pi0.5 prompts (`Task: ..., State: 12 255;\\nAction: `) never hit <unk>.
    With `whole_words` every alphabetic word of `texts` is one token ("red" and " red", as in
    Gemma's vocabulary); without it a corpus of a few prompts splits words into letters and
    fragments shared between words ("red" -> "re" "d", "green" -> "g" "re" "e" "n"), which a tiny
    model must first learn to put together before it can tell the words apart.
    `vocab_size` is an upper bound: a small corpus yields fewer pieces (None: TINY_VOCAB_SIZE, or
    `tiny_vocab_needed(texts)` when that is more). The file is replaced in one step, so processes
    writing the same tokenizer at once never read a partial file.
    """
    import sentencepiece  # lazy: sentencepiece takes 0.1 s to import

    corpus, words, needed = _tiny_corpus(texts, whole_words)
    if vocab_size is None:
        vocab_size = max(TINY_VOCAB_SIZE, needed)
    if vocab_size < needed:
        raise ConfigError(
            f"train_tiny_tokenizer: vocab_size={vocab_size} is too small; these texts need at least {needed}")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(0)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
        character_coverage=1.0, hard_vocab_limit=False, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        user_defined_symbols=["\n", *(f"\u2581{w}" for w in words), *words],  # \u2581: SentencePiece's space
        num_threads=1, shuffle_input_sentence=False, minloglevel=2)
    partial = output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp")
    partial.write_bytes(model.getvalue())
    os.replace(partial, output_path)
    return output_path
