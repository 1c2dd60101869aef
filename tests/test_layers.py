"""The architecture as a rule: src/ and tools/ import each other only downwards, and no module imports itself
back through others (imports inside functions count). README, "Layout", says what each layer owns."""
import ast
import shutil
from pathlib import Path

from conftest import ROOT

# A module may import its own package and packages of a lower layer (same-layer packages stay apart).
LAYERS = {
    "base": 0,       # src/errors, io, labels, device, runlog, _bootstrap: no project imports but each other
    "features": 1,   # series -> per-clip vectors, and the extractors (raw clips -> series)
    "model": 1,      # the networks, dropout, CORAL
    "data": 2,       # the dataset contract and loading, synthetic data, the organisers' importer
    "decode": 3,     # metric, thresholds, the official scorer, submissions
    "train": 3,      # the stacked trainer, its inputs and optimiser
    "run": 4,        # config, experiments, fingerprint, sub-runs, results, the stage pipeline, predict
    "analysis": 5,   # report, compare, leaderboard, CKA
    "apps": 6,       # src/main, ensemble, tune, score and other top-level commands
    "tools": 7,      # benchmarks
}
BASE = {"errors", "io", "labels", "device", "runlog", "_bootstrap"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "tools":
        return "tools"
    if len(parts) == 1:  # src/__init__.py
        return "base"
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS):  # src.<package>[.module]
        return parts[1]
    return "base" if parts[1] in BASE else "apps"


def modules(root: Path) -> dict[str, Path]:
    files = sorted((root / "src").rglob("*.py")) + sorted((root / "tools").glob("*.py"))
    out = {}
    for f in files:
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (from src.a import b: src.a.b if that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        found |= {n for n in names if n in known}
    return found


def violations(root: Path) -> list[str]:
    mods = modules(root)
    graph = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
    problems = []
    for m, deps in graph.items():
        for d in sorted(deps):
            lm, ld = layer_of(m), layer_of(d)
            if ld != lm and LAYERS[ld] >= LAYERS[lm]:
                problems.append(f"{m} ({lm}) imports {d} ({ld}): not a lower layer")
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                problems.append("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return problems


def test_imports_go_downwards_without_cycles():
    assert violations(ROOT) == []
    assert all(layer_of(m) in LAYERS for m in modules(ROOT))


def test_the_rule_catches_an_upward_import_and_a_cycle(tmp_path):
    for folder in ("src", "tools"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    inputs = tmp_path / "src" / "train" / "inputs.py"
    inputs.write_text(inputs.read_text() + "\n\ndef late():\n    from src.analysis import report\n")
    assert violations(tmp_path) == ["src.train.inputs (train) imports src.analysis.report (analysis): not a lower layer"]
    inputs.write_text(inputs.read_text().replace("from src.analysis import report", "from src.train import trainer"))
    (cycle,) = violations(tmp_path)
    assert cycle.startswith("import cycle: ") and sorted(set(cycle[14:].split(" -> "))) == [
        "src.train.inputs", "src.train.trainer"]
