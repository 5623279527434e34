"""The shape of the code base: imports point down (one documented cycle), production code never
imports test support, every op file reads in the same order, functions stay short, and nothing
points outside the repository."""
import ast
import os
import re

import minidl

PACKAGE = os.path.dirname(os.path.abspath(minidl.__file__))
ROOT = os.path.dirname(PACKAGE)

# tensor.py imports the operator sugar (ops/arithmetic.py), which builds on Tensor and
# Function: the one cycle, made on purpose at the end of tensor.py.
ALLOWED_CYCLES = [{"minidl.tensor", "minidl.ops.arithmetic"}]


def _modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def import_graph():
    """module -> the minidl modules it imports (anywhere in the file). Imports of a package
    (its ``__init__``) are left out: those only gather names for users."""
    modules = _modules()
    packages = {m for m, p in modules.items() if p.endswith("__init__.py")}
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        base = module if module in packages else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")[:len(base.split(".")) - node.level + 1]
                    target = ".".join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module and name not in packages:
                    graph[module].add(name)
    return graph


def cycles(graph):
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_imports_form_no_cycle_but_the_documented_one():
    found = cycles(import_graph())
    assert sorted(map(sorted, found)) == sorted(map(sorted, ALLOWED_CYCLES)), found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_production_code_does_not_import_test_support():
    graph = import_graph()
    for module, targets in graph.items():
        if not module.startswith("minidl.testing"):
            assert not any(t.startswith("minidl.testing") for t in targets), module


def _functions(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_longer_than_80_lines_without_saying_why():
    long = []
    for module, path in _modules().items():
        for node in _functions(path):
            length = node.end_lineno - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if length > 80 and "Long because" not in doc:
                long.append(f"{module}.{node.name}: {length} lines")
    assert not long, long


OP_FILES = ["activation", "dropout", "pool", "lrn", "linear", "loss", "conv", "batchnorm", "avgpool",
            "space_to_depth"]


def test_every_op_file_reads_in_the_same_order():
    """Docstring with the formula, simple version, kernels/drivers, Function, public function."""
    for name in OP_FILES:
        path = os.path.join(PACKAGE, "ops", name + ".py")
        tree = ast.parse(open(path).read())
        assert ast.get_docstring(tree), name
        top = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        kinds = []
        for node in top:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Function"):
                kinds.append("function class")
            elif isinstance(node, ast.FunctionDef) and node.name.endswith("_simple"):
                kinds.append("simple")
            elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                kinds.append("public")
            else:
                kinds.append("helper")
        simple = [i for i, k in enumerate(kinds) if k == "simple"]
        classes = [i for i, k in enumerate(kinds) if k == "function class"]
        assert simple, f"ops/{name}.py has no simple version"
        if classes:  # conv.py dispatches to the Functions of im2col.py and winograd.py
            assert max(simple) < min(classes), f"ops/{name}.py: simple version after a Function"
        assert kinds[-1] == "public", f"ops/{name}.py must end with its public function"


def test_function_classes_end_in_function():
    from minidl import ops
    from minidl.tensor import Function

    import importlib
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(ops.__path__)]
    assert {"pool", "winograd", "batchnorm", "space_to_depth"} <= set(names)
    for module_name in names:  # every op file, including any added later
        module = importlib.import_module(f"minidl.ops.{module_name}")
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, Function) and value is not Function:
                if module_name != "arithmetic":  # the Tensor algebra keeps its short names
                    assert name.endswith("Function"), f"ops.{module_name}.{name}"


def test_nothing_points_outside_the_repository():
    pattern = re.compile(r"\.\./shared|SPEC\.md")
    offenders = []
    for folder in ("minidl", "examples", "benchmarks", "docs"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith((".py", ".cu", ".cuh", ".h", ".md")):
                    path = os.path.join(base, name)
                    for number, line in enumerate(open(path, errors="replace"), 1):
                        if pattern.search(line):
                            offenders.append(f"{os.path.relpath(path, ROOT)}:{number}")
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert not pattern.search(readme), "README.md points outside the repository"
    assert not offenders, offenders
