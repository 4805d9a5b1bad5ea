"""Every module imports on its own, whatever was imported before it: a circular import between
stage packages shows only when a module is the first one a process imports (the entry points
`train.py`, `repair.py` and the tools each start from a different one)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_imports_first():
    # One subprocess (imports of torch and friends stay cached in it); the project's own
    # modules are dropped from sys.modules before each import, so each is imported first.
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import ipg_gnn
        names = [m.name for m in pkgutil.walk_packages(ipg_gnn.__path__, "ipg_gnn.")]
        failed = []
        for name in names:
            for key in [k for k in sys.modules if k == "ipg_gnn" or k.startswith("ipg_gnn.")]:
                del sys.modules[key]
            try:
                importlib.import_module(name)
            except ImportError as e:
                failed.append(f"{name}: {e}")
        print(len(names))
        sys.exit("\\n".join(failed) or None)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 40  # every module of the package was tried
