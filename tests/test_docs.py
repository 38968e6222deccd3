"""Every shell command in docs/*.md and README.md refers to something that exists.

- `pirecon ...` (also `.venv/bin/pirecon`, `python -m pirecon`, `accelerate launch ... -m pirecon`):
  the sub-command exists and the command line parses as the command itself parses it, up to the
  point where it would start working (`parse_only`);
- `VAR=... bash examples/NAME.sh`: the script exists and reads every VAR given;
- `python examples/NAME.py --flag ...`: the script exists and takes those flags;
- any other command must be one of OTHER_COMMANDS;
- python blocks compile, relative links point at files that exist, docs/README.md links every page.

The cheap commands of docs/*.md are also run, on stand-in data, by tests/test_examples.py.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pirecon.cli import COMMANDS, main

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
PAGES = [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# Shell commands in the docs that are not pirecon's and not an example: prefix -> why it is there.
OTHER_COMMANDS = {
    "bash scripts/install.sh": "the installer (CI runs it: .ci/run)",
    ".venv/bin/python -m pytest": "the test suite itself",
    ".venv/bin/python benchmarks/": "a benchmark script (checked to exist below)",
}
SEPARATORS = {"|", "||", "&&", ";", "&"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# ---------------------------------------------------------------------------------------------
# Extraction


@dataclass
class DocCommand:
    page: Path
    line: int  # 1-based line of the fenced block's first line of this command
    tokens: list[str]  # the command, environment assignments removed
    env: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.pirecon_argv is not None:
            return "pirecon"
        if len(self.tokens) > 1 and self.tokens[0] == "bash" and self.tokens[1].startswith("examples/"):
            return "script"
        if len(self.tokens) > 1 and Path(self.tokens[0]).name.startswith("python") \
                and self.tokens[1].startswith("examples/"):
            return "python-example"
        return "other"

    @property
    def pirecon_argv(self) -> list[str] | None:
        """The arguments after `pirecon` (or `-m pirecon`), None when this is not a pirecon command."""
        for i, token in enumerate(self.tokens):
            if Path(token).name == "pirecon":
                return self.tokens[i + 1:]
            if token == "-m" and self.tokens[i + 1:i + 2] == ["pirecon"]:
                return self.tokens[i + 2:]
        return None

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}: {shlex.join(self.tokens)[:100]}"


def fenced_blocks(path: Path, languages: tuple[str, ...]) -> list[tuple[int, str]]:
    """(first line number, text) of every fenced block whose info string is one of `languages`."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if current is None:
            if stripped.startswith("```") and stripped[3:].strip() in languages:
                current, start = [], number + 1
        elif stripped.startswith("```"):
            blocks.append((start, "\n".join(current)))
            current = None
        else:
            current.append(line)
    assert current is None, f"{path}: a fenced block starting at line {start - 1} is never closed"
    return blocks


def split_commands(text: str) -> list[tuple[int, list[str]]]:
    """Shell text -> (line offset, tokens) per simple command; continuations joined, comments dropped."""
    out: list[tuple[int, list[str]]] = []
    logical: list[tuple[int, str]] = []
    pending, pending_line = "", 0
    for offset, line in enumerate(text.splitlines()):
        if not pending:
            pending_line = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append((pending_line, pending + line))
        pending = ""
    if pending:
        logical.append((pending_line, pending))
    for offset, line in logical:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                if current:
                    out.append((offset, current))
                current = []
            else:
                current.append(token)
        if current:
            out.append((offset, current))
    return out


def doc_commands(pages=PAGES) -> list[DocCommand]:
    commands = []
    for page in pages:
        for start, text in fenced_blocks(page, ("bash", "sh", "shell", "console")):
            for offset, tokens in split_commands(text):
                env = {}
                while tokens and ENV_ASSIGNMENT.match(tokens[0]):
                    name, _, value = tokens.pop(0).partition("=")
                    env[name] = value
                if tokens:
                    commands.append(DocCommand(page, start + offset, tokens, env))
    return commands


ALL_COMMANDS = doc_commands()


def commands_of(kind: str) -> list[DocCommand]:
    return [c for c in ALL_COMMANDS if c.kind == kind]


# ---------------------------------------------------------------------------------------------
# Parse-only runs of a pirecon command line


class Parsed(Exception):
    """Raised in place of the function a command calls once its flags are parsed."""

    def __init__(self, value: Any):
        super().__init__("parsed")
        self.value = value


# Sub-command -> (module, attribute, wrap). The attribute is what the command calls once its flags
# are parsed and checked. wrap=True: call it (it is the parser) and stop with its result;
# wrap=False: stop with the (args, kwargs) it was called with, before it does any work.
HOOKS: dict[str, tuple[str, str, bool]] = {
    "demo": ("pirecon.demo", "parse_flags", True),
    "smoke": ("pirecon.smoke", "parse_flags", True),
    "stats": ("pirecon.data.stats", "parse_flags", True),
    "doctor": ("pirecon.data.doctor", "parse_flags", True),
    "tokenizer": ("pirecon.data.task_tokenizer", "parse_flags", True),
    "train": ("pirecon.train.command", "parse_command", True),  # before --resume reads the run folder
    "plan": ("pirecon.train.plan", "make_plan", False),
    "presets": ("pirecon.presets", "parse_flags", True),
    "export": ("pirecon.export", "export", False),
    "push": ("pirecon.push", "push", False),
    "recon-viz": ("pirecon.recon_viz", "recon_viz", False),
    "sim": ("pirecon.sim.cli", "parse_flags", True),
    "serve": ("pirecon.serve.command", "build_server", False),
    "eval": ("pirecon.eval.command", "evaluate_checkpoint", False),
    "eval-offline": ("pirecon.eval.offline", "run_offline", False),
}


def _check_eval(value) -> None:
    """`--env.<name>` settings are only collected by the parser; check them against the env's config."""
    from pirecon.configs.parse import from_dict
    from pirecon.eval.command import sim_options
    from pirecon.sim.env import SimConfig

    (cfg,), _ = value
    if cfg.env.type == "sim":
        options, _ = sim_options(cfg.env.options, None)
        SimConfig(**options)
    else:
        from pirecon.eval.libero import LiberoConfig, parse_task
        parse_task(cfg.env.task)
        from_dict(LiberoConfig, cfg.env.options, where="--env")


def _check_serve(value) -> None:
    from pirecon.serve.obs_map import resolve_obs_map

    (cfg,), _ = value
    preset = None if cfg.serve.preset in (None, "", "none") else cfg.serve.preset
    resolve_obs_map(preset, cfg.serve.obs_map, None)


def _check_export(value) -> None:
    from pirecon.checkpoint.layout import FORMATS

    _, kwargs = value
    assert kwargs["format"] in FORMATS, f"--format={kwargs['format']!r}: expected one of {FORMATS}"


AFTER_PARSE = {"eval": _check_eval, "serve": _check_serve, "export": _check_export}


def parse_only(argv: list[str]) -> Any:
    """Run `pirecon ARGV` until its flags are parsed and checked; return what it parsed.

    Raises AssertionError naming the problem when the sub-command does not exist or the command
    stops before it gets to work (an unknown flag, a wrong value, a missing required flag).
    """
    if not argv or argv[0] not in COMMANDS:
        raise AssertionError(f"`pirecon {shlex.join(argv)}`: unknown sub-command; pirecon has {sorted(COMMANDS)}")
    out, err = io.StringIO(), io.StringIO()
    if any(arg in ("-h", "--help") for arg in argv[1:]):
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
        assert code == 0, f"`pirecon {shlex.join(argv)}` exited with {code}: {err.getvalue()}"
        return None
    module_name, attribute, wrap = HOOKS[argv[0]]
    module = importlib.import_module(module_name)
    original = getattr(module, attribute)

    def stop(*args, **kwargs):
        result = original(*args, **kwargs) if wrap else (args, kwargs)
        raise Parsed(getattr(result, "config", result))  # parse_command's Parsed -> its config

    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setattr(module, attribute, stop)
        try:
            code = main(list(argv))
        except Parsed as parsed:
            value = parsed.value
        else:
            raise AssertionError(f"`pirecon {shlex.join(argv)}` stopped with exit code {code} before it got to "
                                 f"work: {err.getvalue().strip() or out.getvalue().strip()[-500:]}")
    if argv[0] in AFTER_PARSE:
        AFTER_PARSE[argv[0]](value)
    return value


# ---------------------------------------------------------------------------------------------
# The parser itself


def test_every_subcommand_has_a_parse_hook():
    assert set(HOOKS) == set(COMMANDS), "add the new command to HOOKS (and its docs)"


BASE_ARGS = {"sim": ["record"], "push": ["outputs/run/checkpoints/last", "org/name"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_misspelled_flag_fails_for_every_command(command):
    with pytest.raises(AssertionError, match=r"unknown flag --no_such_flag"):
        parse_only([command, *BASE_ARGS.get(command, []), "--no_such_flag=1"])


def test_parse_only_returns_the_parsed_config_and_catches_bad_values():
    cfg = parse_only(["train", "--policy.type=pi05", "--peft.r=8", "--steps=7"])
    assert (cfg.policy.type, cfg.peft.r, cfg.steps) == ("pi05", 8, 7)
    with pytest.raises(AssertionError, match=r"--steps='many': expected an integer"):
        parse_only(["train", "--steps=many"])
    with pytest.raises(AssertionError, match=r"--policy.type='pi1': expected 'pi0' or 'pi05'"):
        parse_only(["train", "--policy.type=pi1"])
    with pytest.raises(AssertionError, match="unknown sub-command"):
        parse_only(["trian", "--steps=1"])
    # Checks that run after parsing: environment settings, serve presets, required flags.
    with pytest.raises(Exception, match=r"unknown key 'max_step'; did you mean max_steps"):
        parse_only(["eval", "--policy.path=CKPT", "--env.type=libero", "--env.task=libero_spatial",
                    "--env.max_step=3"])
    with pytest.raises(Exception, match=r"unknown LIBERO suite"):
        parse_only(["eval", "--policy.path=CKPT", "--env.type=libero", "--env.task=libero_spacial"])
    with pytest.raises(Exception, match=r"--serve.preset='bridge'"):
        parse_only(["serve", "--policy.path=CKPT", "--serve.preset=bridge"])
    with pytest.raises(AssertionError, match=r"--output: expected"):
        parse_only(["export", "--policy.path=CKPT"])


def test_a_broken_doc_command_is_caught(tmp_path):
    """What happens when a flag in a page is misspelled: the extractor finds it and parsing fails."""
    page = tmp_path / "page.md"
    page.write_text("text\n\n```bash\nFOO=1 pirecon train --policy.type=pi05 \\\n  --policy.dtyp=bfloat16  # comment\n"
                    "pirecon doctor --dataset.root=/data/x && pirecon stats --dataset.root=/data/x\n```\n")
    commands = doc_commands([page])
    assert [c.pirecon_argv for c in commands] == [
        ["train", "--policy.type=pi05", "--policy.dtyp=bfloat16"],
        ["doctor", "--dataset.root=/data/x"], ["stats", "--dataset.root=/data/x"]]
    assert commands[0].env == {"FOO": "1"} and commands[0].line == 4
    with pytest.raises(AssertionError, match=r"unknown flag --policy.dtyp; did you mean --policy.dtype"):
        parse_only(commands[0].pirecon_argv)


# ---------------------------------------------------------------------------------------------
# The pages


def test_the_pages_hold_commands():
    pages = {c.page.name for c in commands_of("pirecon")}
    expected = {"README.md", "getting-started.md", "finetune-libero.md", "finetune-your-robot.md",
                "lora-and-memory.md", "reconstruction.md", "serving.md", "migrating.md"}
    assert expected <= pages, f"pages without a pirecon command: {sorted(expected - pages)}"
    assert len(commands_of("pirecon")) >= 30


@pytest.mark.parametrize("command", commands_of("pirecon"), ids=str)
def test_pirecon_command_parses(command):
    parse_only(command.pirecon_argv)


@pytest.mark.parametrize("command", commands_of("script"), ids=str)
def test_example_script_exists_and_reads_the_variables_given(command):
    script = REPO_ROOT / command.tokens[1]
    assert script.is_file(), f"{command}: {script} does not exist"
    text = script.read_text()
    unread = [name for name in command.env if not re.search(rf"\${{?{name}\b", text)]
    assert not unread, f"{command}: {script.name} never reads {unread}"


@pytest.mark.parametrize("command", commands_of("python-example"), ids=str)
def test_python_example_takes_the_flags_given(command):
    script = REPO_ROOT / command.tokens[1]
    assert script.is_file(), f"{command}: {script} does not exist"
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    assert res.returncode == 0, res.stderr
    flags = [t.partition("=")[0] for t in command.tokens[2:] if t.startswith("--")]
    missing = [f for f in flags if f not in res.stdout]
    assert not missing, f"{command}: {script.name} has no {missing}"


@pytest.mark.parametrize("command", commands_of("other"), ids=str)
def test_other_commands_are_known(command):
    text = shlex.join(command.tokens)
    reasons = [prefix for prefix in OTHER_COMMANDS if text.startswith(prefix)]
    assert reasons, f"{command}: not a pirecon command, an example, or one of {list(OTHER_COMMANDS)}"
    for token in command.tokens[1:]:
        if token.startswith(("scripts/", "benchmarks/")):
            assert (REPO_ROOT / token).is_file(), f"{command}: {token} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_compile(page):
    for start, text in fenced_blocks(page, ("python",)):
        compile(text, f"{page.name}:{start}", "exec")


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: link {target} points at nothing"


def test_docs_index_links_every_page():
    index = (DOCS / "README.md").read_text()
    linked = set(LINK.findall(index))
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and p.name not in linked]
    assert not missing, f"docs/README.md does not link {missing}"
