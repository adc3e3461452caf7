"""Imports between the project's layers, counted from an installed copy of the package.

File-based tools cannot see ``lrpipe.pipelines`` (it lives in ``pipelines/`` through setuptools'
package-dir), so this installs the package into a temporary folder and reads the import graph there
with grimp (import-linter's engine). ``python scripts/layers.py`` prints, for each pair of layers,
how many module-level imports go from one to the other; an import that goes up is what the
contract in pyproject.toml (``[tool.importlinter]``) refuses.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "filters", "pipelines", "training", "eval", "cli"]


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("filters", "pipelines", "training", "eval"):
        return parts[1]
    if len(parts) > 1 and parts[1] in ("cli", "study", "page", "__main__"):
        return "cli"
    return "core"


def install(target: Path) -> None:
    """A plain install of a copy of the checkout (setuptools builds in the source tree it is given)."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    src = target.parent / "lrpipe-src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "out", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".ruff_cache"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(src)], check=True, cwd=target)


def counts(target: Path) -> dict[tuple[str, str], int]:
    sys.path.insert(0, str(target))
    import grimp

    g = grimp.build_graph("lrpipe")
    out: dict[tuple[str, str], int] = {}
    for m in g.modules:
        for imported in g.find_modules_directly_imported_by(m):
            a, b = layer(m), layer(imported)
            if a != b:
                out[(a, b)] = out.get((a, b), 0) + 1
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        install(Path(tmp) / "installed")
        c = counts(Path(tmp) / "installed")
    print("imports from (row) to (column); above the diagonal goes up a layer")
    print(f"{'':>10s}" + "".join(f"{b:>10s}" for b in LAYERS))
    for a in LAYERS:
        print(f"{a:>10s}" + "".join(f"{c.get((a, b), 0) or '':>10}" for b in LAYERS))
    up = sum(n for (a, b), n in c.items() if LAYERS.index(b) > LAYERS.index(a) and {a, b} != {"training", "eval"})
    print(f"imports going up: {up}")


if __name__ == "__main__":
    main()
