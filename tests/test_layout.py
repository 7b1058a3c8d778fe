"""flows/ and tasks/ install inside the lrgate namespace, never as top-level packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_flows_and_tasks_are_lrgate_subpackages():
    import lrgate.flows
    import lrgate.tasks

    root = Path(__file__).resolve().parents[1]
    assert Path(lrgate.flows.__file__).parent == root / "flows"
    assert Path(lrgate.tasks.__file__).parent == root / "tasks"


def test_no_top_level_flows_or_tasks_package_is_installed():
    # Run from / so the repository itself is not on sys.path.
    code = "import importlib.util as u; print(u.find_spec('flows'), u.find_spec('tasks'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert out.stdout.split() == ["None", "None"]


def test_the_pure_core_imports_neither_prefect_nor_fastai():
    code = (
        "import sys, lrgate.suggest, lrgate.plot, lrgate.curve_file, lrgate.cli; "
        "print(sorted(m for m in ('prefect', 'fastai', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_public_names_resolve():
    import lrgate
    import lrgate.suggest  # binds the submodule on the package: no export may share its name

    for name in lrgate.__all__:
        assert not isinstance(getattr(lrgate, name), type(lrgate)), name
