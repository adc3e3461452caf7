"""The layer contract in pyproject.toml (``[tool.importlinter]``), checked on an installed copy.

import-linter reads module names, but an editable install maps ``lrpipe.pipelines`` to ``pipelines/``
through a finder that its graph builder does not follow; a plain install into a temporary folder puts
every sub-package where it is named. The second test makes one core module import the CLI in that copy
and expects the contract to fail naming it: a check that passes whatever the code does checks nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    import shutil

    # built from a copy: setuptools builds in the source tree, and the checkout should stay as it was
    src = tmp_path_factory.mktemp("src") / "lrpipe-src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "out", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".ruff_cache"))
    target = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(src)], check=True, capture_output=True, cwd=target)
    return target


def lint(target: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(target))
    return subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], capture_output=True,
                          text=True, env=env, cwd=target)


def test_imports_run_one_way(installed):
    res = lint(installed)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_every_core_module_is_under_the_contract(installed):
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    core = set(next(c for c in cfg if c["type"] == "forbidden")["source_modules"])
    layered = {"cli", "study", "page", "__main__", "training", "eval", "pipelines", "filters", "prompts", "fewshot",
               "__init__"}
    have = {p.stem if p.is_file() else p.name for p in (installed / "lrpipe").iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    missing = {f"lrpipe.{m}" for m in have - layered} - core
    assert not missing, f"add to the core's forbidden contract in pyproject.toml (or to a layer): {sorted(missing)}"


def test_an_import_that_goes_up_breaks_the_contract(installed, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(installed, copy)
    shards = copy / "lrpipe" / "shards.py"
    shards.write_text(shards.read_text() + "\n\ndef _up():\n    from lrpipe.pipelines import pack  # noqa\n")
    res = lint(copy)
    assert res.returncode != 0 and "lrpipe.shards -> lrpipe.pipelines" in res.stdout, res.stdout[-3000:]
