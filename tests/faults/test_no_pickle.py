"""Nothing deserialises with pickle: no module imports a pickle-based loader, and every
``np.load`` says ``allow_pickle=False`` (an .npy/.npz can carry a pickle that runs code)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ledrec", "stream", "training", "deploy", "benchmarks")
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "joblib", "marshal"}


def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(ROOT)), ast.parse(path.read_text()))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    ]


def test_no_module_imports_a_pickle_loader() -> None:
    found = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            found += [f"{name}:{node.lineno} {r}" for r in roots & PICKLERS]
    assert not found, found


def test_every_numpy_load_refuses_pickles() -> None:
    loads, unsafe = 0, []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr == "read_pickle":
                unsafe.append(f"{name}:{node.lineno} read_pickle")
            if node.func.attr != "load" or ast.unparse(node.func.value) not in ("np", "numpy"):
                continue
            loads += 1
            flag = next((k.value for k in node.keywords if k.arg == "allow_pickle"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                unsafe.append(f"{name}:{node.lineno}")
    assert loads > 0 and not unsafe, unsafe
