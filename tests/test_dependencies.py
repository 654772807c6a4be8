"""The runtime dependencies pyproject.toml declares are the ones the five stage packages import."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_pipeline", "model", "train", "eval", "launch")

# Declared, but no stage package imports them by name: what loads each one.
LOADED_WITHOUT_IMPORT = {
    "ase-db-backends": "ase.db.connect imports it for type 'aselmdb' (fairchem's .aselmdb databases)",
}
# Found by the packages (importlib.util.find_spec) but deliberately not declared: what installs each one.
INSTALLED_OUTSIDE_PYPROJECT = {
    "MDAnalysisTests": "data only (real protein files); `make setup` installs it with --no-deps, since its "
    "metadata pins MDAnalysis, which nothing uses",
}

# Imported by one module each that nothing in the packages imports, and declared in an optional extra:
# module -> (extra, the one file that imports it).
OPTIONAL_EXTRAS = {
    "torch_sim": ("torchsim", "model/torchsim.py"),
}


def declared_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(spec).name) for spec in project["dependencies"]}


def imported_modules() -> dict[str, str]:
    """Top-level module name -> first file that uses it, over every `import`, `from ... import` (lazy ones
    inside functions included) and literal `importlib.import_module` / `find_spec` name in the packages."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("import_module", "find_spec")
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    names = [node.args[0].value]
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def third_party_imports() -> dict[str, str]:
    return {
        name: where
        for name, where in imported_modules().items()
        if name not in sys.stdlib_module_names and name not in PACKAGES
    }


def test_every_third_party_import_is_a_declared_dependency():
    declared = declared_dependencies()
    providers = importlib.metadata.packages_distributions()
    undeclared = {
        name: f"{where} (provided by: {providers.get(name, ['nothing'])})"
        for name, where in third_party_imports().items()
        if name not in INSTALLED_OUTSIDE_PYPROJECT
        and name not in OPTIONAL_EXTRAS
        and not declared & {canonicalize_name(dist) for dist in providers.get(name, [])}
    }
    assert not undeclared, f"imported but not in [project].dependencies: {undeclared}"


def test_every_declared_dependency_is_imported_or_says_what_loads_it():
    providers = importlib.metadata.packages_distributions()
    used = {canonicalize_name(dist) for name in third_party_imports() for dist in providers.get(name, [])}
    unused = declared_dependencies() - used - {canonicalize_name(n) for n in LOADED_WITHOUT_IMPORT}
    assert not unused, f"declared in pyproject.toml but nothing in {PACKAGES} imports: {sorted(unused)}"


def test_the_exception_tables_name_real_declared_and_found_packages():
    declared = declared_dependencies()
    assert {canonicalize_name(n) for n in LOADED_WITHOUT_IMPORT} <= declared
    assert set(INSTALLED_OUTSIDE_PYPROJECT) <= set(third_party_imports())
    assert not {canonicalize_name(n) for n in INSTALLED_OUTSIDE_PYPROJECT} & declared


def optional_extra_requirements(extra: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(spec).name) for spec in project["optional-dependencies"][extra]}


def test_optional_imports_stay_in_their_one_module_and_are_declared_in_their_extra():
    providers = importlib.metadata.packages_distributions()
    for name, (extra, only_file) in OPTIONAL_EXTRAS.items():
        users = set()
        for package in PACKAGES:
            for path in sorted((ROOT / package).rglob("*.py")):
                tree = ast.parse(path.read_text(), str(path))
                for node in ast.walk(tree):
                    modules = (
                        [alias.name for alias in node.names]
                        if isinstance(node, ast.Import)
                        else [node.module]
                        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                        else []
                    )
                    if any(m.split(".")[0] == name for m in modules):
                        users.add(str(path.relative_to(ROOT)))
                    wrapper = only_file.removesuffix(".py").replace("/", ".")
                    assert wrapper not in modules, (
                        f"{path}: imports {wrapper}, which needs the {extra!r} extra"
                    )
        assert users == {only_file}, f"{name} imported by {sorted(users)}, expected only {only_file}"
        if name in providers:  # installed: the extra names the distribution that provides it
            provided = {canonicalize_name(dist) for dist in providers[name]}
            assert provided & optional_extra_requirements(extra), (name, extra, provided)
