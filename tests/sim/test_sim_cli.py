"""`pirecon sim` command line: help, flag spellings, eval and preview."""

from __future__ import annotations

import pytest
from PIL import Image

from pirecon.cli import main
from pirecon.errors import ConfigError
from pirecon.sim.cli import run


def test_help_lists_subcommands_and_flags(capsys):
    assert run([]) == 0
    assert "record" in capsys.readouterr().out
    assert run(["record", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--episodes", "--output", "--seed", "--image_size", "--version"):
        assert flag in out


def test_unknown_subcommand_and_flag(capsys):
    assert run(["replay"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown flag --episode"):
        run(["eval", "--episode=3"])
    assert main(["sim", "eval", "--policy=greedy"]) == 2
    assert "--policy='greedy'" in capsys.readouterr().err


def test_eval_accepts_space_separated_flags(capsys):
    assert main(["sim", "eval", "--episodes", "8", "--seed", "3"]) == 0
    assert "expert: success 8/8" in capsys.readouterr().out


def test_preview_writes_a_contact_sheet(tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert run(["preview", f"--output={out}", "--image_size=64", "--every=5"]) == 0
    image = Image.open(out)
    assert image.height == 128 and image.width % 66 == 0
    assert "success=True" in capsys.readouterr().out


def test_record_requires_an_output():
    with pytest.raises(ConfigError, match="--output"):
        run(["record", "--episodes=1"])


def test_record_passes_the_layout_to_the_dataset(tmp_path, capsys):
    from pirecon.sim import recorded_sim_config

    out = tmp_path / "d"
    assert run(["record", f"--output={out}", "--episodes=1", "--image_size=32", "--cells=corners",
                "--max_steps=70", "--num_blocks=1"]) == 0
    config = recorded_sim_config(out)
    assert config.cells == "corners" and config.max_steps == 70 and config.image_size == 32
    assert config.num_blocks == 1


def test_record_passes_the_action_noise(tmp_path, capsys, monkeypatch):
    from pirecon.sim import cli

    seen = {}
    real = cli.record  # the recorder `pirecon sim record` calls

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "record", spy)
    assert run(["record", f"--output={tmp_path / 'n'}", "--episodes=1", "--image_size=32", "--action_noise=0.3"]) == 0
    assert seen["action_noise"] == 0.3
    with pytest.raises(ConfigError, match="action_noise"):
        run(["record", f"--output={tmp_path / 'm'}", "--episodes=1", "--action_noise=2"])
