"""The import contract: layers point one way, and no package reaches into another's privates.

Layers, from the bottom: ``geomtrace`` (0) < ``analyses`` (1) < ``figures`` (2) <
``reproduce`` (3) < ``cli.py`` (4). A module never imports a higher layer: geomtrace never
imports analyses, figures, reproduce or cli; analyses never figures, reproduce or cli; figures
never reproduce or cli; reproduce never cli (cli drives reproduce: ``geomtrace reproduce``).
This is the order the code satisfies today (reproduce imports analyses, figures and geomtrace;
cli imports all four).

Private modules and names (``_x``) belong to the package that holds them: outside a package,
nobody imports its private modules (``figures._style``, ``analyses._results``,
``geomtrace._reader``, ``geomtrace.recipe._language_table``, ``from figures import _style``);
it uses the package's public names. A sub-package (``geomtrace.recipe``, ``geomtrace.integrations``) may
use its own private modules, not its parent's. Tests mirror the package they test:
``tests/geomtrace/test_*.py`` may test the core's private modules, ``tests/geomtrace/recipe``
the recipe's, ``tests/analyses`` those of analyses, ``tests/figures`` those of figures.

An import is any ``import``/``from ... import`` statement (inside functions too, relative ones
resolved), a string passed to ``import_module``/``__import__``, and a lazy export string: a
value of a dict literal whose values are all dotted names rooted at a project package (the
``_EXPORTS = {"name": "module.path"}`` mapping of a package ``__init__``). A small AST walk
over every ``.py`` file. Each rule has a test that plants a violation in a copy of the
sources and checks that it is flagged.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the layer of each top-level package or module of the project, from the bottom
LAYERS = {"geomtrace": 0, "analyses": 1, "figures": 2, "reproduce": 3, "cli": 4}
SKIP_DIRS = {"__pycache__", "build", "dist", "node_modules"}
#: a dotted module name rooted at a project package: what a lazy export string names
MODULE_NAME = re.compile("(?:" + "|".join(LAYERS) + r")(?:\.[A-Za-z_]\w*)*")
#: calls whose first (string) argument is a module imported by name
IMPORT_CALLS = {"import_module", "__import__"}
#: (file, imported module) pairs that break a rule today in files this contract's owner may not
#: edit; each with the reason, to be removed when the file is fixed. Empty: none today.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def repo_sources(root: Path = ROOT) -> dict[str, str]:
    """``{path relative to root (posix): source}`` of every ``.py`` file of the repository."""
    sources = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                sources[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
    return dict(sorted(sources.items()))


def module_of(rel: str) -> str:
    """Dotted module name of a file relative to the repository root."""
    parts = list(Path(rel).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(rel: str) -> str:
    """The package a file's relative imports are resolved against."""
    module = module_of(rel)
    return module if rel.endswith("__init__.py") else module.rpartition(".")[0]


def _export_strings(node: ast.Dict) -> list[str]:
    """The values of a lazy-export mapping (all values dotted project module names), else []."""
    values = [v.value if isinstance(v, ast.Constant) else None for v in node.values]
    if values and all(isinstance(v, str) and MODULE_NAME.fullmatch(v) for v in values):
        return values
    return []


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


@functools.cache
def imports(rel: str, source: str) -> tuple[tuple[int, str], ...]:
    """(line, absolute module) for every import in the file ``rel`` with text ``source``;
    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a module). Lazy export strings
    and ``import_module("x")`` calls count as imports of ``x``."""
    tree = ast.parse(source, filename=rel)
    package = package_of(rel)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                source_module = ".".join([*base, node.module] if node.module else base)
            else:
                source_module = node.module or ""
            found.append((node.lineno, source_module))
            found += [(node.lineno, f"{source_module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, name) for name in _export_strings(node)]
        elif isinstance(node, ast.Call) and _call_name(node) in IMPORT_CALLS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return tuple(found)


def layer(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_target(imported: str) -> str | None:
    """The package (or top-level module) whose private member ``imported`` reaches into
    (None: not private, or not the project's)."""
    parts = imported.split(".")
    if parts[0] not in LAYERS:
        return None
    for i, part in enumerate(parts[1:], start=1):
        if is_private(part):
            return ".".join(parts[:i])
    return None


def own_package(rel: str) -> str:
    """The package a file belongs to; a test file belongs to the package its folder mirrors
    (tests/geomtrace/integrations/test_hf.py -> geomtrace.integrations)."""
    package = package_of(rel)
    if package == "tests" or package.startswith("tests."):
        package = package.removeprefix("tests").lstrip(".")
    return package or module_of(rel)


def layer_violations(sources: dict[str, str]) -> list[tuple[str, int, str]]:
    """(file, line, module) of every import of a higher layer (tests, examples, benchmarks
    may use any layer)."""
    bad = set()
    for rel, source in sources.items():
        own = layer(module_of(rel))
        if own is None:
            continue
        for line, imported in imports(rel, source):
            other = layer(imported)
            if other is not None and other > own:
                bad.add((rel, line, imported))
    return sorted(bad)


def private_violations(sources: dict[str, str]) -> list[tuple[str, int, str]]:
    """(file, line, module) of every import of a private module or name from outside the
    package that owns it; one entry per import statement (``from a._x import y`` is reported
    as ``a._x``)."""
    out = []
    for rel, source in sources.items():
        own = own_package(rel)
        for line, imported in imports(rel, source):
            target = private_target(imported)
            if target is None:
                continue
            # A package's own modules and tests, and its sub-packages, may use its privates;
            # the core's privates (geomtrace._x) are for the core only, not its sub-packages.
            inside = own == target or (target != "geomtrace" and own.startswith(target + "."))
            if not inside:
                out.append((rel, line, imported))
    first: dict[tuple[str, int], str] = {}
    for rel, line, imported in sorted(out, key=lambda r: (r[0], r[1], len(r[2]))):
        first.setdefault((rel, line), imported)
    return [(rel, line, imported) for (rel, line), imported in first.items()]


def unexcused(violations: list[tuple[str, int, str]]) -> list[str]:
    return [f"{f}:{n} imports {m}" for f, n, m in violations if (f, m) not in KNOWN_EXCEPTIONS]


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return repo_sources()


def planted(sources: dict[str, str], rel: str, code: str) -> dict[str, str]:
    """A copy of ``sources`` with ``code`` appended to file ``rel`` (a new file if absent)."""
    copy = dict(sources)
    copy[rel] = copy.get(rel, "") + "\n" + code + "\n"
    return copy


def planted_in_exports(sources: dict[str, str], rel: str, entry: str) -> dict[str, str]:
    """A copy of ``sources`` with ``entry`` added to the ``_EXPORTS`` mapping of ``rel``."""
    text = sources[rel]
    assert text.count("_EXPORTS = {\n") == 1, f"{rel} has no single _EXPORTS mapping"
    copy = dict(sources)
    copy[rel] = text.replace("_EXPORTS = {\n", "_EXPORTS = {\n    " + entry + ",\n")
    return copy


def flagged(violations: list[tuple[str, int, str]], rel: str) -> set[str]:
    return {m for f, _, m in violations if f == rel}


# -- the real repository ---------------------------------------------------------------------
def test_layers_point_downwards(sources):
    bad = unexcused(layer_violations(sources))
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)


def test_no_package_imports_another_packages_private_modules(sources):
    bad = unexcused(private_violations(sources))
    assert not bad, f"{len(bad)} private imports across packages:\n" + "\n".join(bad)


def test_the_known_exceptions_still_exist(sources):
    """An exception that no longer happens is removed from the list (it would hide a relapse)."""
    happening = {(f, m) for f, _, m in layer_violations(sources) + private_violations(sources)}
    assert not set(KNOWN_EXCEPTIONS) - happening


def test_the_contract_sees_imports_of_every_form():
    """The walker itself: relative, from-package, dotted, string and lazy-export imports."""
    assert private_target("geomtrace._reader") == "geomtrace"
    assert private_target("geomtrace.integrations._extras") == "geomtrace.integrations"
    assert private_target("figures._style") == "figures"
    assert private_target("analyses._results.RunResults") == "analyses"
    assert private_target("geomtrace.__version__") is None
    assert private_target("geomtrace.open_trace") is None
    assert private_target("numpy._core") is None
    hf = "geomtrace/integrations/hf.py"
    found = {m for _, m in imports(hf, (ROOT / hf).read_text(encoding="utf-8"))}
    assert "geomtrace.integrations._extras" in found
    found = {m for _, m in imports("figures/_x.py", "from . import _style\nfrom ._draw import a")}
    assert {"figures._style", "figures._draw", "figures._draw.a"} <= found
    found = {m for _, m in imports("cli.py", "def f():\n    import_module('figures._style')")}
    assert found == {"figures._style"}
    init = "geomtrace/__init__.py"
    found = {m for _, m in imports(init, (ROOT / init).read_text(encoding="utf-8"))}
    assert "geomtrace._reader" in found  # the lazy export of open_trace
    assert not imports("x.py", "labels = {'raw': 'raw cosine', 'x': 'analyses'}")  # not exports
    assert layer("figures._plot") == 2 and layer("reproduce") == 3 and layer("cli") == 4
    assert layer("numpy") is None


# -- each rule fails on a planted violation ----------------------------------------------------
#: one file of each layer, where a planted import goes
LAYER_FILES = {
    "geomtrace": "geomtrace/_reader.py",
    "analyses": "analyses/_measures.py",
    "figures": "figures/_draw.py",
    "reproduce": "reproduce/__init__.py",
    "cli": "cli.py",
}
UPWARD = [(low, high) for low in LAYERS for high in LAYERS if LAYERS[high] > LAYERS[low]]


@pytest.mark.parametrize(("low", "high"), UPWARD, ids=[f"{lo}->{hi}" for lo, hi in UPWARD])
def test_an_import_of_a_higher_layer_is_flagged(sources, low, high):
    """Every layer, reproduce and cli included: e.g. analyses importing reproduce, reproduce
    importing cli."""
    rel = LAYER_FILES[low]
    assert not flagged(layer_violations(sources), rel)
    for code in (f"import {high}", f"def later():\n    from {high} import something"):
        assert high in flagged(layer_violations(planted(sources, rel, code)), rel), code


def test_cli_importing_a_private_module_of_figures_or_analyses_is_flagged(sources):
    for code, module in (
        ("from figures._style import parse_formats", "figures._style"),
        ("from figures import _style", "figures._style"),
        ("import analyses._results", "analyses._results"),
        ("def f():\n    from analyses._measures import Similarity", "analyses._measures"),
        ("import importlib\nimportlib.import_module('figures._draw')", "figures._draw"),
    ):
        assert flagged(private_violations(planted(sources, "cli.py", code)), "cli.py") == {
            module
        }, code


def test_every_private_module_of_every_package_is_protected(sources):
    """For each private module ``P._m`` of each package P: an import of it from cli.py, and a
    lazy export string naming it in another package's ``__init__``, are both flagged."""
    private = sorted(
        module_of(rel)
        for rel in sources
        if layer(module_of(rel)) is not None and is_private(Path(rel).stem)
    )
    assert {"geomtrace._reader", "analyses._results", "figures._style"} <= set(private)
    assert (
        "geomtrace.recipe._language_table" in private
        and "geomtrace.integrations._extras" in private
    )
    inits = [
        "geomtrace/__init__.py",
        "figures/__init__.py",
        "geomtrace/recipe/__init__.py",
        "geomtrace/integrations/__init__.py",
    ]
    for module in private:
        owner = module.rpartition(".")[0]
        copy = planted(sources, "cli.py", f"import {module}")
        assert flagged(private_violations(copy), "cli.py") == {module}, module
        # An __init__ outside the owner (a parent's counts: the core may not reach into a
        # sub-package's privates by string either, only by its public names).
        outside = next(i for i in inits if own_package(i) != owner)
        copy = planted_in_exports(sources, outside, f'"planted": "{module}"')
        assert module in flagged(private_violations(copy), outside), (module, outside)


def test_a_lazy_export_naming_another_packages_private_module_or_a_higher_layer_is_flagged(
    sources,
):
    init = "geomtrace/__init__.py"
    copy = planted_in_exports(sources, init, '"RunResults": "analyses._results"')
    assert flagged(private_violations(copy), init) == {"analyses._results"}
    assert flagged(layer_violations(copy), init) == {"analyses._results"}
    copy = planted_in_exports(sources, init, '"analyse_run": "analyses"')
    assert flagged(layer_violations(copy), init) == {"analyses"}
    copy = planted_in_exports(sources, "figures/__init__.py", '"reproduce": "reproduce"')
    assert flagged(layer_violations(copy), "figures/__init__.py") == {"reproduce"}
    recipe = "geomtrace/recipe/__init__.py"  # a sub-package may not export the core's privates
    copy = planted_in_exports(sources, recipe, '"Trace": "geomtrace._reader"')
    assert flagged(private_violations(copy), recipe) == {"geomtrace._reader"}


def test_tests_and_examples_follow_the_private_rule(sources):
    """Tests may reach the private modules of the package they mirror, and no other's."""
    rel = "tests/figures/test_planted.py"
    assert not private_violations(planted(sources, rel, "from figures._style import x"))
    copy = planted(sources, rel, "from analyses._results import x")
    assert flagged(private_violations(copy), rel) == {"analyses._results"}
    rel = "examples/planted.py"
    copy = planted(sources, rel, "from geomtrace._reader import Trace")
    assert flagged(private_violations(copy), rel) == {"geomtrace._reader"}
