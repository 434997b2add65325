"""The SwanLab backend: one SwanLab run, keys SwanLab keeps (docs/backends.md, SwanLab).

`SwanLabBackend` lives in `backend`, the key rules in `keys`, the run files' reader in `files`;
SwanLab itself is imported only when a run opens.
"""

from __future__ import annotations

from tf_ship.backends.swanlab.backend import SwanLabBackend

__all__ = ["SwanLabBackend"]
