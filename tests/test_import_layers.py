"""Lower layers never import higher ones, and the library never imports the tests.

Every module of the installed package (`perception`, with `ops/` as `perception.ops` and
`deploy/` as `perception.deploy`) is parsed with `ast`; every import statement counts,
including those inside functions (a function-local import is still a dependency, only a
later one) and under `if TYPE_CHECKING:`. Relative imports are resolved against the
importing module, and ``from package import name`` counts as an import of the submodule
``package.name`` when that is a module.

The layers, lowest first (`LAYERS`); a module may import its own layer and lower ones:

=================  =====================================================================
foundation         typed structures, config, geometry, checkpoint I/O, who-and-how-many
                   (`perception.distributed`), provenance, the scripts' argument helpers
                   and process set-up (`perception.cli`, `perception.runtime`)
ops                custom operators (`perception.ops`)
components         datasets and transforms, models, visualization, the generative models
                   and object banks (the paste transform of the datasets uses them)
applications       the training engine, evaluation, the real-time node (`perception.deploy`)
                   and the generators' training loops and evaluation
front ends         benchmarks (and `tools/`, which is not part of the package)
=================  =====================================================================

Inside the applications layer (`SEPARATE`): the node imports neither the training engine nor
the evaluation, and the evaluation does not import the engine; they load trained models with
`perception.models.loading.load_model` over the checkpoint I/O. The engine may use the
evaluation (evaluating during training).

Only `perception.distributed` (and the engine, which sets process groups up) names
`torch.distributed`: every other module asks `perception.distributed` who and how many we are.

An existing edge that breaks a rule and is too big to fix in passing goes into `ALLOWED`
with its reason; the test fails on every edge not listed, and on a listed edge that no longer
exists (so the list only shrinks).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# Lowest first.
LAYERS = ("foundation", "ops", "components", "applications", "front ends")

# Module prefix -> layer; the longest prefix that matches a module decides. "perception"
# itself matches only the package's own __init__ (its version): a new top-level module of
# the package must be given a layer here.
LAYER_OF: dict[str, str] = {
    "perception": "foundation",
    "perception.structures": "foundation",
    "perception.config": "foundation",
    "perception.geometry": "foundation",
    "perception.checkpoint": "foundation",
    "perception.distributed": "foundation",
    "perception.provenance": "foundation",
    "perception.cli": "foundation",  # argparse helpers, no torch (config.loader uses them)
    "perception.runtime": "foundation",  # process set-up (CPU threads) the scripts call
    "perception.ops": "ops",
    "perception.datasets": "components",
    "perception.models": "components",
    "perception.visualization": "components",
    # The generative networks, sampling, banks and paste are components (the datasets'
    # paste transform uses them); training and evaluating generators are applications.
    "perception.generative": "components",
    "perception.generative.hart.train": "applications",
    "perception.generative.hart.baseline": "applications",
    "perception.generative.gan.train": "applications",
    "perception.generative.evaluate": "applications",
    "perception.engine": "applications",
    "perception.evaluation": "applications",
    "perception.deploy": "applications",
    "perception.benchmarks": "front ends",
}

# (importer prefix, imported prefix) in the same layer that must not meet, and why.
SEPARATE: dict[tuple[str, str], str] = {
    ("perception.deploy", "perception.engine"): "the node does not import the training loop",
    ("perception.deploy", "perception.evaluation"): "the node does not import the evaluation",
    ("perception.evaluation", "perception.engine"): (
        "the evaluation reads checkpoints with perception.checkpoint, not the training loop"
    ),
}

# (importing module, imported module) -> why the edge stays for now. Each entry is a
# known violation to remove; the test fails when one no longer exists.
ALLOWED: dict[tuple[str, str], str] = {}

# The one place that asks torch.distributed who and how many we are is
# `perception.distributed`; the engine sets process groups up and runs the synchronized
# BatchNorm's collectives. Any other module that names `torch.distributed` is a failure.
TORCH_DISTRIBUTED_USERS = ("perception.distributed", "perception.engine")

# Module -> why it still names torch.distributed (each to move to `perception.distributed`).
TORCH_DISTRIBUTED_ALLOWED: dict[str, str] = {}


@dataclass(frozen=True)
class Edge:
    importer: str  # the importing module, e.g. "perception.models.detector"
    line: int
    imported: str  # the imported module (absolute)
    path: str = ""  # the importing file, for the message


def package_roots() -> dict[str, Path]:
    """Import name -> source folder of the installed package and its two mapped parts."""
    roots = {}
    for name in ("perception", "perception.ops", "perception.deploy"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
        roots[name] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package __init__), for every module of the package."""
    modules: dict[str, tuple[Path, bool]] = {}
    for name, root in package_roots().items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join([name, *parts])] = (path, is_package)
    return modules


def imports_of(
    source: str, module: str, is_package: bool, known: set[str] | frozenset[str] = frozenset()
) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement in `source`, function-local ones
    included; relative imports resolved against `module`. ``from a import b`` gives
    ``a.b`` when that is one of the `known` modules, else ``a``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 > len(base) - 1:
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond the top")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            if submodules:
                found.extend((node.lineno, s) for s in submodules)
            if len(submodules) < len(node.names):
                found.append((node.lineno, target))
    return sorted(set(found))


def package_edges() -> list[Edge]:
    modules = package_modules()
    known = set(modules)
    edges = []
    for module, (path, is_package) in modules.items():
        for line, imported in imports_of(
            path.read_text(encoding="utf-8"), module, is_package, known
        ):
            edges.append(Edge(module, line, imported, str(path)))
    return edges


def names_torch_distributed(source: str) -> list[int]:
    """Lines of `source` that import `torch.distributed` or name ``torch.distributed``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            if any(_in(a.name, "torch.distributed") for a in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if _in(node.module, "torch.distributed") or (
                node.module == "torch" and any(a.name == "distributed" for a in node.names)
            ):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "distributed"
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
        ):
            lines.append(node.lineno)
    return sorted(set(lines))


def layer_of(module: str) -> tuple[str, str] | None:
    """(matching prefix, layer) of a package module; None when no prefix covers it."""
    best = None
    for prefix in LAYER_OF:
        exact_only = prefix == "perception"
        if module == prefix or (not exact_only and module.startswith(prefix + ".")):
            if best is None or len(prefix) > len(best):
                best = prefix
    return None if best is None else (best, LAYER_OF[best])


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(edges: list[Edge], allowed: dict[tuple[str, str], str] | None = None) -> list[str]:
    """One message per edge that breaks the layering (not in `allowed`), per unassigned
    module, and per `allowed` entry that matches no edge."""
    allowed = ALLOWED if allowed is None else allowed
    problems = []
    used = set()
    for edge in edges:
        where = f"{edge.importer} (line {edge.line}"
        where += f", {edge.path})" if edge.path else ")"
        top = edge.imported.split(".")[0]
        if top == "tests":
            problems.append(f"{where} imports {edge.imported}: the library never imports tests")
            continue
        if top != "perception":
            continue  # third-party and standard library
        source = layer_of(edge.importer)
        target = layer_of(edge.imported)
        if source is None:
            problems.append(f"{edge.importer}: no layer; add its prefix to LAYER_OF")
            continue
        if target is None:
            problems.append(
                f"{where} imports {edge.imported}, which has no layer; add it to LAYER_OF"
            )
            continue
        (_, low), (_, high) = source, target
        reason = None
        if LAYERS.index(high) > LAYERS.index(low):
            reason = "a lower layer imports a higher one"
        else:
            for (a, b), why in SEPARATE.items():
                if _in(edge.importer, a) and _in(edge.imported, b):
                    reason = why
        if reason is None:
            continue
        if (edge.importer, edge.imported) in allowed:
            used.add((edge.importer, edge.imported))
            continue
        problems.append(
            f"{where} [{low}] imports {edge.imported} [{high}]: {reason} "
            f"(layers, lowest first: {' -> '.join(LAYERS)})"
        )
    for key in sorted(set(allowed) - used):
        problems.append(f"ALLOWED lists {key[0]} -> {key[1]}, which is gone: remove the entry")
    return sorted(set(problems))


# --------------------------------------------------------------------------------------
# The package as it is


def test_no_upward_import_and_no_import_of_tests():
    edges = package_edges()
    assert len({e.importer for e in edges}) > 100  # the walk found the package
    problems = violations(edges)
    assert not problems, "\n".join(problems)


def test_one_module_asks_torch_distributed():
    problems, used = [], set()
    for module, (path, _) in package_modules().items():
        lines = names_torch_distributed(path.read_text(encoding="utf-8"))
        if not lines or any(_in(module, p) for p in TORCH_DISTRIBUTED_USERS):
            continue
        if module in TORCH_DISTRIBUTED_ALLOWED:
            used.add(module)
            continue
        problems.append(
            f"{module} ({path}, lines {lines}) names torch.distributed: ask "
            "perception.distributed (rank, world_size, is_distributed, all_gather_objects)"
        )
    problems += [f"TORCH_DISTRIBUTED_ALLOWED lists {m}, which no longer names it: remove it"
                 for m in sorted(set(TORCH_DISTRIBUTED_ALLOWED) - used)]  # fmt: skip
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer():
    missing = [m for m in package_modules() if layer_of(m) is None]
    assert not missing, f"no layer in LAYER_OF for: {', '.join(missing)}"


def test_the_node_and_inference_do_not_load_the_training_loop():
    """The edges above, seen from the modules: what deploy and evaluation reach."""
    edges = package_edges()
    reached = {
        e.imported
        for e in edges
        if _in(e.importer, "perception.deploy") or _in(e.importer, "perception.evaluation")
    }
    assert not {m for m in reached if _in(m, "perception.engine")}


def test_inference_modules_leave_the_training_loop_unloaded():
    """At run time too: importing the model loader, the node, ONNX export and the test
    runner loads no module of `perception.engine` (whose package imports the trainer)."""
    code = (
        "import sys\n"
        "import perception.models.loading, perception.deploy.node, perception.deploy.export\n"
        "import perception.evaluation.runner\n"
        "print(sorted(m for m in sys.modules if m.startswith('perception.engine')))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------
# The check itself can fail


def test_an_upward_edge_names_module_line_and_both_layers():
    edge = Edge("perception.models.heads.fake", 12, "perception.engine.trainer")
    (message,) = violations([edge], allowed={})
    assert "perception.models.heads.fake (line 12)" in message
    assert "[components] imports perception.engine.trainer [applications]" in message
    assert "a lower layer imports a higher one" in message


@pytest.mark.parametrize(
    ("importer", "imported", "expected"),
    [
        ("perception.deploy.node", "perception.evaluation.runner", "does not import the eval"),
        ("perception.deploy.export", "perception.engine.checkpoint", "training loop"),
        ("perception.evaluation.runner", "perception.engine", "not the training loop"),
        ("perception.config.loader", "perception.ops.voxelize", "lower layer imports a higher"),
        ("perception.ops.nms", "tests.ops.helpers", "the library never imports tests"),
        ("perception.datasets.io", "tests", "the library never imports tests"),
        ("perception.brand_new", "perception.structures", "no layer"),
        ("perception.models.detector", "perception.brand_new", "has no layer"),
    ],
)
def test_each_rule_fails_on_a_fake_edge(importer, imported, expected):
    (message,) = violations([Edge(importer, 1, imported)], allowed={})
    assert expected in message


def test_torch_distributed_is_seen_in_every_spelling():
    source = (
        "import torch\n"
        "import torch.distributed as dist\n"
        "from torch import distributed\n"
        "from torch.distributed import get_rank\n"
        "def f():\n"
        "    return torch.distributed.is_initialized()\n"
        "from torch import nn\n"
    )
    assert names_torch_distributed(source) == [2, 3, 4, 6]


def test_allowed_edges_pass_and_stale_entries_fail():
    edge = Edge("perception.deploy.node", 7, "perception.evaluation.runner")
    key = (edge.importer, edge.imported)
    assert violations([edge], allowed={key: "being split"}) == []
    (stale,) = violations([], allowed={key: "being split"})
    assert "is gone: remove the entry" in stale


def test_downward_and_same_layer_edges_pass():
    edges = [
        Edge("perception.models.heads.centerpoint", 1, "perception.distributed"),
        Edge("perception.models.loading", 1, "perception.checkpoint"),
        Edge("perception.deploy.node", 1, "perception.models.loading"),
        Edge("perception.engine.trainer", 1, "perception.evaluation.runner"),
        Edge("perception.benchmarks.node", 1, "perception.deploy.node"),
        Edge("perception.datasets.pipeline", 1, "perception.generative.paste"),
        Edge("perception.ops.nms", 1, "numpy"),
    ]
    assert violations(edges, allowed={}) == []


def test_function_local_and_relative_imports_are_seen():
    source = (
        "import torch\n"
        "from . import sibling\n"
        "from ..engine import trainer, Trainer\n"
        "def build():\n"
        "    from ..distributed import rank\n"
        "    import tests.perception.models.helpers\n"
    )
    known = {"perception.models.sibling", "perception.engine.trainer"}
    found = imports_of(source, "perception.models.fake", False, known)
    assert found == [
        (1, "torch"),
        (2, "perception.models.sibling"),
        (3, "perception.engine"),  # Trainer: a name of the package
        (3, "perception.engine.trainer"),  # trainer: a module
        (5, "perception.distributed"),
        (6, "tests.perception.models.helpers"),
    ]
    edges = [Edge("perception.models.fake", line, imported) for line, imported in found]
    problems = violations(edges, allowed={})
    assert len(problems) == 3  # the engine twice (line 3), the tests (line 6)
    assert all("perception.models.fake (line 3)" in p for p in problems[:2])
    assert "(line 6)" in problems[2] and "never imports tests" in problems[2]
