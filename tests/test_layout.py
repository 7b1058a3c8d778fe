"""The package's layers, and flows/ and tasks/ inside the lrgate namespace.

    lrgate.core        pure: no fastai, no torch, no Prefect, nothing above it
    lrgate.training    the fastai side: no Prefect; core only
    lrgate.operations  no fastai, no torch; core only
    lrgate.tasks       Prefect tasks over training and operations: never flows
    lrgate.flows       composes tasks and gates

Imports are read from the source (``ast``), every one, also those inside functions: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
        "import sys, lrgate.core.suggest, lrgate.core.plot, lrgate.core.curve_file, lrgate.cli; "
        "print(sorted(m for m in ('prefect', 'fastai', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_public_names_resolve():
    import lrgate
    import lrgate.core.suggest  # binds the submodule on the package: no export may share its name

    for name in lrgate.__all__:
        assert not isinstance(getattr(lrgate, name), type(lrgate)), name


def imported_modules(path: Path, package: str = "lrgate.x") -> set[str]:
    """Every module ``path`` (a module of ``package``) imports, at any depth of its code; a relative import is
    read as the absolute name it stands for."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}  # `from lrgate.core import suggest`
    return names


def layer_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


FORBIDDEN = {
    "lrgate/core": (
        "fastai",
        "torch",
        "torchvision",
        "prefect",
        "lrgate.training",
        "lrgate.operations",
        "lrgate.flows",
        "lrgate.tasks",
        "lrgate.cli",
        "lrgate.notebook",
    ),
    "lrgate/training": (
        "prefect",
        "lrgate.operations",
        "lrgate.flows",
        "lrgate.tasks",
        "lrgate.cli",
        "lrgate.notebook",
    ),
    "lrgate/operations": (
        "fastai",
        "torch",
        "torchvision",
        "lrgate.training",
        "lrgate.flows",
        "lrgate.tasks",
        "lrgate.cli",
        "lrgate.notebook",
    ),
    "tasks": ("lrgate.flows",),
}


PACKAGE = {folder: "lrgate." + folder.removeprefix("lrgate/") for folder in FORBIDDEN}  # tasks/ is lrgate.tasks

# The one exception, named: a config that names a torchvision arch is checked against torchvision's registry when
# it loads (so a typo names the field before any training), inside that check only.
ALLOWED = {("lrgate/core/config.py", "torchvision.models")}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_lies_below_it(folder):
    files = layer_files(folder)
    assert len(files) > 1, folder
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in imported_modules(path, PACKAGE[folder])
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[folder])
        and (str(path.relative_to(ROOT)), name) not in ALLOWED
    }
    assert not wrong, sorted(wrong)


def test_the_layout_check_sees_a_lazy_upward_import(tmp_path):
    # The check itself can fail: an import hidden in a function body is found.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from lrgate.training import race\n    import prefect.flows\n    from ..tasks import t\n"
    )
    found = imported_modules(bad, "lrgate.core")
    assert {"lrgate.training", "lrgate.training.race", "prefect.flows", "lrgate.tasks.t"} <= found


def test_benchmark_and_test_code_is_not_in_the_runtime_package():
    # What serves only the benchmarks and the tests lives beside them, not in the installed package.
    runtime = {p.stem for p in (ROOT / "lrgate").rglob("*.py")}
    assert not runtime & {"efficacy", "efficacy_scoring", "process_groups", "local_prefect", "tiny_learners"}
    for path in (ROOT / "lrgate").rglob("*.py"):
        assert not any(n.startswith(("tests", "benchmarks")) for n in imported_modules(path)), path


def test_each_module_name_is_used_once():
    # Two files of one name (two stages.py, say) make a reader open the wrong one.
    stems = [p.stem for folder in ("lrgate", "flows", "tasks") for p in (ROOT / folder).rglob("*.py")]
    stems = [s for s in stems if s != "__init__"]
    assert len(stems) == len(set(stems)), sorted(s for s in stems if stems.count(s) > 1)


def test_a_model_exported_by_0_4_0_still_names_modules_that_load():
    # fastai's export pickles the data pipeline's label function and the Lite0 body and splitter by module path;
    # 0.4.0's paths (lrgate.data, lrgate.models, ...) resolve to the modules that hold that code now
    import importlib
    import pickle

    from lrgate import MOVED_IN_0_5
    from lrgate.training.data import LabelTable, folder_label
    from lrgate.training.models import lite0_splitter

    for old, new in MOVED_IN_0_5.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
        assert importlib.import_module(new).__spec__.name == new  # the alias leaves the module's own spec alone
    for obj in (folder_label, lite0_splitter, LabelTable({"a.png": "cat"})):
        written_by_0_4_0 = pickle.dumps(obj, protocol=0).replace(b"lrgate.training.", b"lrgate.")
        assert b"clrgate.data\n" in written_by_0_4_0 or b"clrgate.models\n" in written_by_0_4_0
        loaded = pickle.loads(written_by_0_4_0)
        assert loaded is obj if not isinstance(obj, LabelTable) else loaded.labels == obj.labels
