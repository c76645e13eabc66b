"""The harness's import graph (.ci/check_import_graph.py) has no cycle, and the check finds one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_import_graph", ROOT / ".ci" / "check_import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_harness_has_no_import_cycle_even_through_function_level_imports() -> None:
    tool = _tool()
    graph, _ = tool.import_graph(ROOT / "src", "vicinal.experiments")
    assert "vicinal.experiments.training.loop" in graph["vicinal.experiments.training.single"]
    assert tool.find_cycles(graph) == []
    assert tool.find_cycles(tool.parts_graph(graph, "vicinal.experiments")) == []
    assert tool.main(["--src", str(ROOT / "src")]) == 0


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    tool = _tool()
    graph, in_functions = tool.import_graph(tmp_path, "pkg")
    assert in_functions == 1
    assert tool.find_cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    assert graph["pkg.c"] == set()  # imports that only type checkers see are not edges
    assert tool.find_cycles(tool.parts_graph(graph, "pkg")) == [["pkg.a", "pkg.sub"]]
    assert tool.main(["--src", str(tmp_path), "--package", "pkg"]) == 1
