"""Checkpoint folders: one reader (`load`) for every kind, one writer per format.

Kinds read: a pirecon folder (`pirecon export`, or a training checkpoint with full weights), a
training checkpoint holding a LoRA adapter over a frozen base, an openpi PyTorch folder, a LeRobot
folder, and a Hugging Face Hub id resolved through the local cache. Writers: `write_pirecon`,
`write_lerobot`, `write_openpi`; `training` saves and resumes training checkpoints.

    from pirecon.checkpoint.load import load
    loaded = load("outputs/run/checkpoints/last")   # Loaded: config, model, normaliser, tokenizer, ...
"""
