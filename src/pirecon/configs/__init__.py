"""Every configuration of pirecon: frozen dataclasses with one line of documentation per field,
one flag parser and one `--help` format (`parse`), and the named model sizes (`variants`).

One module per area: `policy` (the model and how it runs), `data` (datasets; stats, doctor and
tokenizer commands), `train` (peft, optimizer, scheduler, wandb, the run), `recon` (the
reconstruction loss; recon-viz), `eval` (closed loop and offline), `serve`, `sim` (the simulator's
commands), `demo` (demo and smoke), `checkpoint` (export and push), `lerobot` (lerobot-train's
flags in pirecon's terms), `presets` (openpi's training configs as flags; `pirecon presets`). Environment parameters (`pirecon.sim.SimConfig`,
`pirecon.eval.libero.LiberoConfig`) stay with their environment, which checks them.

This package imports nothing else of pirecon but `errors`; every other package may import it."""
