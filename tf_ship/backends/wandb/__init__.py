"""The wandb backend: one wandb run, one x-axis per model (docs/backends.md, wandb).

`WandbBackend` lives in `backend`; wandb itself is imported only when a run opens.
"""

from __future__ import annotations

from tf_ship.backends.wandb.backend import WandbBackend

__all__ = ["WandbBackend"]
