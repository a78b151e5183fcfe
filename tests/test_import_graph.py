"""The import graph stays a ladder: config <- model <- the stages in pipeline order <- the tools, with data/
underneath and free of cycles. Read from the source (ast), so it checks every import, function-local ones too."""
import ast
import os

from conftest import ROOT

PIPELINE = ["fast_tokenizer", "sft", "grpo", "diffusion_head", "vla_train", "eval_libero"]
TOOLS = ["serve", "eval_workers", "knn_probe", "ablate"]
SHARED = {"config": set(), "model": {"config", "fast_tokenizer"},   # model builds on FAST's tokenizer class
          "samples": {"fast_tokenizer"}}                             # the MLLM stages' examples and batches
# eval_libero hands --workers runs to eval_workers and talks to a --policy ws://... through serve's client; both
# tools import eval_libero or vla_train back, so eval_libero imports them inside the function that needs them.
STAGE_USES_TOOL = {("eval_libero", "eval_workers"), ("eval_libero", "serve")}


def imports(path: str) -> set:
    """Project modules `path` imports anywhere in it (top-level names, plus data.<module> for data/)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        if isinstance(node, ast.ImportFrom) and node.module == "data":       # from data import prompts
            names = [f"data.{a.name}" for a in node.names]
        for n in names:
            parts = n.split(".")
            out.add(".".join(parts[:2]) if parts[0] == "data" else parts[0])
    local = {os.path.splitext(f)[0] for f in os.listdir(ROOT) if f.endswith(".py")}
    data = {f"data.{os.path.splitext(f)[0]}" for f in os.listdir(os.path.join(ROOT, "data")) if f.endswith(".py")}
    return out & (local | data)


def test_stages_import_only_shared_modules_earlier_stages_and_data():
    for i, stage in enumerate(PIPELINE + TOOLS):
        allowed = set(SHARED) | set(PIPELINE[:i]) | (set(PIPELINE + TOOLS) - {stage} if stage in TOOLS else set())
        bad = {m for m in imports(os.path.join(ROOT, f"{stage}.py"))
               if not m.startswith("data.") and m not in allowed and (stage, m) not in STAGE_USES_TOOL}
        assert not bad, f"{stage}.py imports {sorted(bad)}: a stage imports config, model, earlier stages and data/"
    for mod, allowed in SHARED.items():
        bad = {m for m in imports(os.path.join(ROOT, f"{mod}.py")) if not m.startswith("data.") and m not in allowed}
        assert not bad, f"{mod}.py imports {sorted(bad)}"


def test_data_has_no_import_cycle():
    folder = os.path.join(ROOT, "data")
    graph = {f"data.{os.path.splitext(f)[0]}": {m for m in imports(os.path.join(folder, f)) if m.startswith("data.")}
             for f in os.listdir(folder) if f.endswith(".py")}
    for mod in graph:                        # data/ builds on config only, never on a stage or model
        outside = {m for m in imports(os.path.join(folder, mod[5:] + ".py")) if not m.startswith("data.")}
        assert outside <= {"config"}, f"{mod} imports {sorted(outside)}"
    state = {}                               # depth-first search: 1 = on the current path, 2 = done

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != 1, "import cycle in data/: " + " -> ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [])
