"""The package's import graph (issue 14): no circles, and no module imports one from a higher layer.

Every import statement counts — module level, inside functions, under `if TYPE_CHECKING:` — over
`remote_introspect/` and `benchmarks/`. A new module must be placed in LAYERS (lowest first); a
module may import any module of its own layer or of a lower one, never of a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("remote_introspect", "benchmarks")

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (  # pure helpers, data and errors: import nothing of the package but each other
            "remote_introspect",
            "errors",
            "keys",
            "atomic",
            "retry_policy",
            "experiment",
            "experiment.prompts",
            "experiment.probe_prompts",
            "experiment.validators",
            "models",
            "models.presets",
            "execution",
            "execution.traces",
            "execution.traces.interventions",
            "stats",
            "stats.analysis",
            "stats.crossover",
            "stats.coupling",
            "stats.self_prediction",
            "experiment.self_prediction_tasks",
            "stats.comparison",
            "grading.lexicon",
            "testing",
            "testing.ndif_protected_env",
        ),
    ),
    # what an experiment is, and which model it runs on
    (
        "config",
        (
            "experiment.spec",
            "experiment.protocols",
            "experiment.localization",
            "experiment.probe_spec",
            "models.tiny",
            "models.loading",
            "models.parameters",
            "experiment.self_prediction",
        ),
    ),
    ("store", ("store", "store.database", "experiment.planner")),  # keys → trials → batches, and where they are kept
    (
        "grading",
        (
            "grading",
            "grading.base",
            "grading.heuristic",
            "grading.llm_judge",
            "grading.service",
            "grading.calibration",
            "grading.table_io",
        ),
    ),
    # the checks of stored bytes, the one read-only frame and its statistics
    ("read", ("store.integrity", "store.results_frame", "stats.cells", "stats.scaling")),
    ("knobs", ("experiment.knobs", "experiment.ladder")),  # spec diffs (knob → rubric) and ladder files
    (
        "execution",
        (
            "execution.traces.generation_batch",
            "execution.traces.portable",
            "execution.traces.hf_generation",
            "execution.traces.steered_generation",
            "execution.traces.extraction",
            "execution.traces.readout",
            "execution.concept_vectors",
            "execution.backends",
            "execution.backends.base",
            "execution.backends.local",
            "execution.backends.ndif",
            "execution.validation",
            "execution.batch_loop",
            "execution.runner",
            "execution.scale",
            "execution.probe_report",
            "execution.self_prediction",
            "execution.ladder",
            "execution.localization",
        ),
    ),
    (
        "reporting",
        (
            "reporting",
            "reporting.hit_listing",
            "reporting.positive_table",
            "reporting.browser",
            "reporting.judge_agreement",
            "reporting.audit",
            "reporting.audit_text",
            "reporting.export",
            "reporting.report",
            "reporting.summary",
            "reporting.scaling",
            "reporting.probe_report",
            "reporting.self_prediction",
            "reporting.comparison",
            "reporting.ladder",
            "reporting.localization",
            "reporting.sections",
        ),
    ),
    (
        "cli",
        ("cli", "cli.app", "cli.options", "cli.running", "cli.experiments", "cli.results", "cli.compare", "cli.ladder", "cli.localize",
         "cli.scale", "cli.probe_report", "cli.self_predict", "__main__"),
    ),
    ("testing", ("testing.judge_loopback", "testing.ndif_loopback", "testing.planted_self_model")),
    ("benchmarks", ("benchmarks.ndif_round_trips", "benchmarks.throughput")),
)


def _full(name: str) -> str:
    if name == "remote_introspect" or name.startswith("benchmarks"):
        return name
    return f"remote_introspect.{name}"


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [
                    f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names
                ]
            for t in targets:
                while t and t not in mods:  # `import a.b.c` of a package's attribute: its module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of() -> dict[str, int]:
    return {_full(m): i for i, (_name, mods) in enumerate(LAYERS) for m in mods}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    level = layer_of()
    return [
        f"{a} ({LAYERS[level[a]][0]}) imports {b} ({LAYERS[level[b]][0]})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if level[b] > level[a]
    ]


def test_every_module_has_a_layer() -> None:
    level = layer_of()
    assert sorted(set(modules()) - set(level)) == []
    assert sorted(set(level) - set(modules())) == []  # no stale entries


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_upward_imports() -> None:
    assert upward_imports(import_graph()) == []


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert cycles(graph) == [["a", "b"]]
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import y\ndef f():\n    from . import z\n"
    found = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) and n.level]
    assert len(found) == 2


def test_reporting_never_imports_execution() -> None:
    """The summary, audit, report and export read the store; none of them reaches the runner,
    the executors or the traces (not even through the layers in between)."""
    graph = import_graph()
    execution = {_full(m) for m in dict(LAYERS)["execution"]}
    reporting = [_full(m) for m in dict(LAYERS)["reporting"]]

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for d in graph[todo.pop()] - seen:
                seen.add(d)
                todo.append(d)
        return seen

    assert {m: sorted(reach(m) & execution) for m in reporting if reach(m) & execution} == {}
