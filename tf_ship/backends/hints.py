"""View hints that run as printed in the environment tf-ship was installed in.

A tracker's command (``tensorboard``, ``mlflow``, ``wandb``) may not be on the ``PATH`` (a venv
used without activating it, pipx), or not installed at all (``tf-ship[all]`` does not install
TensorBoard): the hint then names the program beside this Python, or says how to install it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def program(name: str, package: str | None = None) -> str:
    """How to call program `name` here: its name on the PATH, else its path beside this Python.

    Not installed at all: an install command for `package` (default: `name`) comes first, so
    that the hint still runs as printed.
    """
    if shutil.which(name):
        return name
    bindir = Path(sys.executable).parent
    beside = bindir / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return shlex.quote(str(beside))
    wanted = package or name
    pip = shutil.which("pip")
    if pip and Path(pip).parent == bindir:
        return f"pip install {wanted} && {name}"
    return f"{shlex.quote(sys.executable)} -m pip install {wanted} && {shlex.quote(str(beside))}"
