"""The import contract: layers point one way, and only geomtrace's public names cross its edge.

Layers, from the top: ``cli.py`` > ``figures`` > ``analyses`` > ``geomtrace``. A lower layer
never imports a higher one (``geomtrace`` never imports analyses, figures or cli). Outside the
core (``geomtrace/_*.py`` and ``geomtrace/__init__.py``), no module imports a private module of
geomtrace (``geomtrace._x``, ``from geomtrace import _x``, ``geomtrace.integrations._x`` from
outside ``geomtrace.integrations``): it uses ``import geomtrace as gt`` names and the documented
public submodules. Tests mirror the package they test: the core's own unit tests
(``tests/geomtrace/test_*.py``) may test its private modules, ``tests/geomtrace/recipe`` the
recipe's. A small AST walk over every ``.py`` file; imports inside functions count too.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"geomtrace": 0, "analyses": 1, "figures": 2, "cli": 3}
SKIP_DIRS = {"__pycache__", "build", "dist", "node_modules"}

# Files the core engineer owns (their private imports are a hard failure); the rest are
# reported as an expected failure until their owners move to public names.
CORE_OWNED = (
    "geomtrace/_",
    "geomtrace/__init__.py",
    "geomtrace/integrations/",
    "tests/geomtrace/test_",
    "tests/geomtrace/integrations/",
    "tests/test_layers.py",
    "examples/",
    "benchmarks/",
)


def python_files() -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS]
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(files)


def module_of(path: Path) -> str:
    """Dotted module name of a file relative to the repository root."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``; ``from a import b`` yields both
    ``a`` and ``a.b`` (b may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            found.append((node.lineno, source))
            found += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
    return found


def layer(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_target(imported: str) -> str | None:
    """The package whose private member ``imported`` reaches into (None: not private)."""
    parts = imported.split(".")
    if parts[0] != "geomtrace":
        return None
    for i, part in enumerate(parts[1:], start=1):
        if is_private(part):
            return ".".join(parts[:i])
    return None


def in_core(rel: str) -> bool:
    return rel == "geomtrace/__init__.py" or (rel.startswith("geomtrace/_") and rel.count("/") == 1)


def own_package(path: Path) -> str:
    """The package a file belongs to; a test file belongs to the package its folder mirrors
    (tests/geomtrace/integrations/test_hf.py -> geomtrace.integrations)."""
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if package == "tests" or package.startswith("tests."):
        package = package.removeprefix("tests").lstrip(".")
    return package


def private_imports() -> list[tuple[str, int, str]]:
    """(file, line, module) of every import of a private geomtrace module from outside the
    package that owns it. The core (files directly in geomtrace/, and the tests mirroring it)
    may use geomtrace._x; a sub-package (geomtrace.integrations, geomtrace.recipe) and its
    tests may use its own private modules, not the core's."""
    out = []
    for path in python_files():
        rel = path.relative_to(ROOT).as_posix()
        if in_core(rel):
            continue
        own = own_package(path)
        for line, imported in imports(path):
            target = private_target(imported)
            if target is None:
                continue
            inside = own == target or (target != "geomtrace" and own.startswith(target + "."))
            if not inside:
                out.append((rel, line, imported))
    # One entry per import statement: `from geomtrace._x import y` is reported as geomtrace._x.
    first: dict[tuple[str, int], str] = {}
    for rel, line, imported in sorted(out, key=lambda r: (r[0], r[1], len(r[2]))):
        first.setdefault((rel, line), imported)
    return [(rel, line, imported) for (rel, line), imported in first.items()]


def owned(rel: str) -> bool:
    return any(rel == p or rel.startswith(p) for p in CORE_OWNED)


def test_layers_point_downwards():
    bad = []
    for path in python_files():
        rel = path.relative_to(ROOT).as_posix()
        own = layer(module_of(path))
        if own is None:
            continue  # tests, examples, benchmarks may use any layer
        for line, imported in imports(path):
            other = layer(imported)
            if other is not None and other > own:
                bad.append(f"{rel}:{line} imports {imported}")
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(sorted(set(bad)))


def test_core_owned_files_use_only_public_geomtrace_names():
    bad = [f"{f}:{n} imports {m}" for f, n, m in private_imports() if owned(f)]
    assert not bad, "private geomtrace imports:\n" + "\n".join(bad)


def test_no_private_geomtrace_imports_outside_the_core():
    bad = [f"{f}:{n} imports {m}" for f, n, m in private_imports()]
    assert not bad, f"{len(bad)} private geomtrace imports outside the core:\n" + "\n".join(bad)


def test_the_contract_sees_imports_of_every_form(tmp_path):
    """The walker itself: relative, from-package and dotted imports all resolve."""
    assert private_target("geomtrace._reader") == "geomtrace"
    assert private_target("geomtrace.integrations._extras") == "geomtrace.integrations"
    assert private_target("geomtrace.__version__") is None
    assert private_target("geomtrace.open_trace") is None
    found = dict((m, n) for n, m in imports(ROOT / "geomtrace/integrations/hf.py"))
    assert "geomtrace.integrations._extras" in found
    assert layer("figures._plot") == 2 and layer("cli") == 3 and layer("numpy") is None
