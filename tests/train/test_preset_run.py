"""`pirecon train --preset=...` end to end: a tiny model on the simulator data, the preset's recipe
with the tiny sizes typed over it; the summary names the preset and what was overridden."""

from __future__ import annotations

import json

from pirecon.checkpoint.layout import EMA_FILE
from pirecon.cli import main
from tests.train.helpers import logged, tiny_train_flags

SIM_CAMERAS = '--dataset.camera_map={"top": "base_0_rgb", "wrist": "left_wrist_0_rgb"}'


def test_a_preset_run_trains_with_the_preset_and_resumes(sim_dataset, sim_tokenizer, tmp_path, capsys,
                                                         fresh_accelerator):
    out = tmp_path / "run"
    argv = ["train", "--preset=pi05_libero",
            *tiny_train_flags(sim_dataset, sim_tokenizer, out, SIM_CAMERAS, "--steps=2", kind="pi05")]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "  preset      pi05_libero: openpi's pi05_libero config, 41 values, " in printed
    assert "  overridden  batch_size: preset 256, running 4" in printed
    assert "  overridden  policy.optimizer_lr: preset 5e-05, running 0.001" in printed
    assert '  overridden  dataset.camera_map: preset {"image": "base_0_rgb"' in printed
    assert "  overridden  policy.loss_reduction" not in printed and "EMA 0.999" in printed
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["preset"], saved["ema_decay"], saved["seed"], saved["batch_size"]) == ("pi05_libero", 0.999, 42, 4)
    assert (saved["policy"]["loss_reduction"], saved["policy"]["normalization_mode"], saved["policy"]["dtype"]) == (
        "all", "quantile", "bfloat16")
    assert saved["policy"]["tokenizer_max_length"] == 200 and saved["policy"]["chunk_size"] == 4
    assert saved["dataset"]["image_transforms"]["enable"] and saved["dataset"]["image_transforms"]["recipe"] == "openpi"
    assert (out / "checkpoints" / "last" / EMA_FILE).is_file()
    assert sorted(logged(out)) == [1, 2]

    # A resumed run keeps its preset (its values are in the saved config), and says so.
    assert main(["train", "--resume=true", f"--output_dir={out}", "--steps=3", "--preset=pi0_libero"]) == 2
    assert "a resumed run keeps its configuration (drop --preset)" in capsys.readouterr().err
    assert main(["train", "--resume=true", f"--output_dir={out}", "--steps=3", "--preset=pi05_libero"]) == 0
    assert "  overridden  batch_size: preset 256, running 4" in capsys.readouterr().out
    assert sorted(logged(out)) == [1, 2, 3]


def test_a_lora_preset_typed_back_to_full_fine_tuning(sim_dataset, sim_tokenizer, tmp_path, capsys):
    """The preset's --peft.* values do not turn LoRA back on (typed --peft.* flags would)."""
    out = tmp_path / "run"
    argv = ["train", "--preset=pi0_libero_low_mem_finetune", "--policy.use_peft=false", "--policy.dtype=float32",
            *tiny_train_flags(sim_dataset, sim_tokenizer, out, SIM_CAMERAS, "--steps=1")]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "training    every weight (no LoRA)" in printed
    assert "  overridden  policy.use_peft: preset true, running false" in printed
    assert not (out / "checkpoints" / "last" / "adapter").exists()
