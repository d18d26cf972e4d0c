"""The package's layering, read from the source (AST): who may import whom, no import cycles, no module
over 400 lines, no method-name switch outside methods/ and bench/; and the public names import.

The table is ARCHITECTURE.md §4; each subpackage's ``__init__`` docstring states its own row.
"""
import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "fedpft_algo"
TOP = {"", "cli", "inference", "export", "participant"}  # the package and its entry points may import anything
HEAVY = {"torch", "transformers", "peft", "fedml", "safetensors"}
# layer -> the fedpft_algo layers (or single modules) it may import; its own layer is always allowed
MAY = {"errors": set(), "files": set(), "compat": set(), "config": {"errors"}, "settings": {"config", "errors"},
       "core": {"errors", "config"},
       "methods": {"core", "config", "errors", "files"}, "data": {"errors", "compat"},
       "models": {"core.arch", "errors", "files"}, "rundir": {"errors", "files", "config"},
       "tasks": {"core", "data", "config", "errors"},
       "runtime": {"errors", "files", "compat", "config", "settings", "core", "methods", "data", "models", "rundir",
                   "tasks"},
       "launch": {"config", "settings", "errors", "files", "rundir"},
       "bench": {"launch", "methods", "core", "data", "models", "rundir", "config", "settings", "errors", "files",
                 "compat", "tasks"}}
MAY_IN_FUNCTIONS = {"launch": {"data", "models", "core.arch", "tasks"}}  # the pre-flight loads, never at import
NEVER = {"errors": HEAVY, "files": HEAVY, "config": HEAVY, "settings": HEAVY, "core": {"fedml"}, "methods": {"fedml"},
         "tasks": {"fedml"},
         "rundir": {"fedml"}}  # third-party packages; launch: no HEAVY in its whole import-time closure
# Violations still allowed (none: the last ones went with the methods registry, the run-dir owner and
# the launcher split). An entry that no longer occurs fails its test.
ALLOWED_IMPORTS = set()
ALLOWED_CYCLES = set()
ALLOWED_LONG = set()
ALLOWED_SWITCHES = set()

FILES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix("__init__").rstrip("."): p
         for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in FILES.items()}


def layer(module: str) -> str:
    return "" if module in TOP else module.split(".")[0]


def imports(module: str):
    """``(target, at_import)`` per import: a fedpft_algo module (dotted, no prefix) or ``ext:<package>``."""
    package = module if FILES[module].name == "__init__.py" else module.rpartition(".")[0]
    nested = {id(n) for f in ast.walk(TREES[module]) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = ["fedpft_algo"] + (package.split(".") if package else [])
            anchor = parts[:len(parts) + 1 - node.level] if node.level else []
            base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}".removeprefix("fedpft_algo.") in FILES
                     and base.startswith("fedpft_algo") else base for alias in node.names]
        else:
            continue
        for name in names:
            inside = name == "fedpft_algo" or name.startswith("fedpft_algo.")
            target = name.removeprefix("fedpft_algo").lstrip(".") if inside else "ext:" + name.split(".")[0]
            yield target, id(node) not in nested


def _within(target: str, rules) -> bool:
    return any(target == rule or target.startswith(rule + ".") for rule in rules)


def test_each_layer_imports_only_what_its_row_allows():
    found = set()
    for module in FILES:
        own = layer(module)
        assert own in MAY or own == "", f"{module}: its layer has no row in MAY (the import table)"
        for target, at_import in imports(module) if own else ():
            if target.startswith("ext:"):
                if target[4:] in NEVER.get(own, ()):
                    found.add((module, target[4:]))
            elif layer(target) != own and not _within(target, MAY[own] | (
                    set() if at_import else MAY_IN_FUNCTIONS.get(own, set()))):
                found.add((module, target))
    assert found - ALLOWED_IMPORTS == set()
    assert ALLOWED_IMPORTS - found == set(), "fixed: remove these from ALLOWED_IMPORTS"


def test_launch_imports_no_torch_transformers_peft_or_fedml_at_import_time():
    for start in (m for m in FILES if layer(m) == "launch"):
        seen, todo = set(), [start]
        while todo:  # import-time closure within fedpft_algo (the root package is imported anyway)
            module = todo.pop()
            for target, at_import in imports(module):
                parts = target.split(".")
                for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if at_import else ():
                    if name not in seen:  # the module and the packages above it (their __init__) run
                        seen.add(name)
                        todo += [name] if name in FILES and name else []
        assert {name[4:] for name in seen if name.startswith("ext:")} & HEAVY == set(), start


def test_no_import_cycles_between_modules():
    graph = {m: {t for t, _ in imports(m) if t in FILES and t != m} for m in FILES}
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        reach[start] = seen
    cycles = {frozenset(m for m in reach[start] if start in reach[m]) for start in graph if start in reach[start]}
    assert cycles - ALLOWED_CYCLES == set()
    assert ALLOWED_CYCLES - cycles == set(), "fixed: remove these from ALLOWED_CYCLES"


def test_no_module_over_400_lines():
    long = {m for m, path in FILES.items() if len(path.read_text(encoding="utf-8").splitlines()) > 400}
    assert long - ALLOWED_LONG == set() and ALLOWED_LONG - long == set()


METHOD_NAME = re.compile(r"fedpft(_[a-z])?|fedot|fedpetuning")  # the built-in methods' names


def _words(node) -> str:
    """The identifier or string a node carries (``cfg.method`` -> ``method``, ``row["method"]`` -> ``method``)."""
    text = getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "value", None)
    return text if isinstance(text, str) else ""


def test_no_method_name_switch_outside_methods_and_bench():
    found = set()
    for module, tree in TREES.items():
        for node in ast.walk(tree) if layer(module) not in ("methods", "bench") else ():
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                     for op in node.ops):
                words = [_words(n) for side in (node.left, *node.comparators) for n in ast.walk(side)]
                if any(METHOD_NAME.fullmatch(w) for w in words) and any("method" in w for w in words):
                    found.add((module, ast.unparse(node)))
    assert found - ALLOWED_SWITCHES == set(), "ask the method instead: fedpft_algo.methods"
    assert ALLOWED_SWITCHES - found == set(), "fixed: remove these from ALLOWED_SWITCHES"


def test_the_public_names_import():
    from fedpft_algo import (ArchSpec, FedPFTConfig, add_lora, build_sub_model, build_sub_model_skeleton,  # noqa: F401
                             plug_in_, register_arch, trainable_state, weighted_average)

    assert callable(importlib.import_module("fedpft_algo.cli").main)
    assert callable(importlib.import_module("fedpft_algo.participant").main)
    assert hasattr(importlib.import_module("fedpft_algo.inference"), "predict")
