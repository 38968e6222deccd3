"""pirecon: fine-tune Pi0 / Pi0.5 in plain PyTorch, with an optional reconstruction loss."""

from pirecon.configs.policy import PolicyConfig

__version__ = "0.1.0"

__all__ = ["PolicyConfig", "Batch", "Pi0Policy", "load", "load_policy", "save_policy", "__version__"]


def __getattr__(name):  # imported lazily so `pirecon --help` does not pay for torch
    if name == "Batch":
        from pirecon.batch import Batch  # lazy: torch
        return Batch
    if name == "Pi0Policy":
        from pirecon.model.pi0 import Pi0Policy  # lazy: torch
        return Pi0Policy
    if name in ("load", "load_policy"):
        from pirecon.checkpoint import load  # lazy: torch
        return getattr(load, name)
    if name == "save_policy":
        from pirecon.checkpoint.write_pirecon import save_policy  # lazy: torch
        return save_policy
    raise AttributeError(f"module 'pirecon' has no attribute {name!r}")
