"""The architecture as the file tree shows it: layers that import downwards only, small modules, no dates in code,
and a facade that loads no tool."""
import ast
import pathlib
import re
import subprocess
import sys

import pytest



ROOT = pathlib.Path(__file__).resolve().parents[1] / "raypar"
# lowest first: a module may import its own layer and the layers before it
LAYERS = ["base", "network", "engine", "training", "tools", "cli"]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "base"


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Every raypar module that ``name`` imports, at any depth of its code (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("raypar")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("raypar"):
                out.add(target)
                out |= {f"{target}.{a.name}" for a in node.names}
    known = {n for n, _ in _modules()}
    return {m for m in out if m in known}


def test_layers_import_downwards_only():
    wrong = []
    for name, path in _modules():
        if name == "raypar":                 # the facade may name any layer (it loads training names lazily)
            continue
        mine = LAYERS.index(_layer(name))
        for target in _imports(name, path):
            if target != "raypar" and LAYERS.index(_layer(target)) > mine:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layering: " + ", ".join(sorted(wrong))


def test_no_import_cycles_between_modules():
    graph = {name: {t for t in _imports(name, path) if t != name and not name.startswith(t + ".")}
             for name, path in _modules()}
    state: dict = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"
    for node in graph:
        if node not in state:
            visit(node, [node])


def test_no_module_over_500_lines():
    big = {str(p.relative_to(ROOT.parent)): n for _, p in _modules()
           if (n := len(p.read_text().splitlines())) > 500}
    assert not big, f"modules over 500 lines: {big}"


def test_no_dates_in_code_or_help():
    dated = [f"{p.relative_to(ROOT.parent)}:{i}" for _, p in _modules()
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"20\d\d-[01]\d-[0-3]\d", line)]
    assert not dated, f"dates in code: {dated}"


def test_the_facade_loads_no_tool():
    code = ("import sys, raypar; raypar.fit, raypar.TrainConfig, raypar.PararealNet; "
            "print(' '.join(m for m in sys.modules if m.startswith(('raypar.tools', 'raypar.cli'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_the_command_starts_without_loading_torch_or_ray():
    """`raypar train` prints its first line before the seconds that torch and Ray take to load."""
    code = "import sys, raypar, raypar.cli.main; print(sorted({'torch', 'ray', 'mlflow'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_raypar_train_starts_ray_without_torch(tmp_path):
    """The command's own work before Ray starts (its settings, the data's check, the run's name and store) imports no
    torch: only the drivers and the actors compute. `ray.init` is stopped where it is called; ``--help`` loads no torch
    either."""
    code = ("import sys, ray\n"
            "def stop(*a, **k):\n"
            "    print('torch' in sys.modules, flush=True); raise SystemExit(0)\n"
            "ray.init = stop\n"
            "from raypar.cli.main import main\n"
            "main(['train', '--epochs', '1', '--folds', '3', '--fold', '1'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.stdout.strip().splitlines()[-1:] == ["False"], r.stdout + r.stderr
    code = ("import sys, contextlib, io\nfrom raypar.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main(['train', '--help'])\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.stdout.strip() == "False", r.stdout + r.stderr


def test_raypar_train_loads_no_tool():
    """`raypar train` (and `jobs/train.py`) make only train's options: no bench, plan, tune or study module loads."""
    code = ("import sys; from raypar.cli.main import build_parser; "
            "build_parser('train').parse_args(['train', '--epochs', '2']); "
            "print(sorted(m for m in sys.modules if m.startswith('raypar.tools')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
