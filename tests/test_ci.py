"""The CI scripts: the oldest-versions session pins exactly pyproject's floors."""

from __future__ import annotations

import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - tf-ship depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
OLDEST = ROOT / ".ci" / "oldest"


def oldest_module() -> ModuleType:
    """.ci/oldest, a script without a .py suffix, as a module."""
    loader = SourceFileLoader("ci_oldest", str(OLDEST))
    spec = spec_from_loader("ci_oldest", loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_pins_are_pyprojects_floors_plus_its_constraints() -> None:
    """Every tracker's `>=` floor becomes `==`, and the oldest table's constraints follow."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    optional = pyproject["project"]["optional-dependencies"]
    result = subprocess.run(
        [sys.executable, str(OLDEST), "--pins"], capture_output=True, text=True, check=True
    )
    pins = result.stdout.splitlines()
    for extra, package in (
        ("wandb", "wandb"),
        ("mlflow", "mlflow"),
        ("tensorboard", "tensorboardX"),
    ):
        (floor,) = [r for r in optional[extra] if r.startswith(f"{package}>=")]
        assert f"{package}=={floor.removeprefix(f'{package}>=')}" in pins
    constraints = pyproject["tool"]["tf-ship"]["oldest"]["constraints"]
    assert pins[-len(constraints) :] == constraints


def test_floor_pins_follow_extras_keep_markers_and_skip_what_has_no_floor() -> None:
    """Extras named through tf-ship[...] are followed; markers stay; `<` alone is no floor."""
    project = {
        "dependencies": ["attrs>=23.1", "tomli>=2.0; python_version < '3.11'", "click"],
        "optional-dependencies": {
            "one": ["wandb>=0.22.3,<1", "crc32c >= 2.4"],
            "two": ["mlflow[extras]>=3.9"],
            "test": ["pytest>=8"],
            "all": ["tf-ship[one,two]"],
        },
    }
    assert oldest_module().floor_pins(project) == [
        "attrs==23.1",
        "tomli==2.0 ; python_version < '3.11'",
        "mlflow==3.9",
        "wandb==0.22.3",
        "crc32c==2.4",
    ]


def test_floors_that_conflict_get_an_environment_of_their_own() -> None:
    """The `apart` extras are pinned and tested alone; the other trackers together, without them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    module = oldest_module()
    apart = tuple(pyproject["tool"]["tf-ship"]["oldest"]["apart"])
    plan = dict(module.environments(pyproject))
    assert plan["apart"] == apart
    assert not set(plan["trackers"]) & set(apart)
    assert {"wandb", "mlflow", "tensorboard"} <= set(plan["trackers"])
    together = module.tests_for(plan["trackers"], apart)
    alone = module.tests_for(plan["apart"], apart)
    assert alone == [test for name in apart for test in module.backend_tests(name)]
    assert {f"tests/test_{name}_backend.py" for name in apart} <= set(alone)
    assert "tests/test_wandb_backend.py" in together
    assert not set(together) & set(alone)
