"""The package's shape: layers import only downward, no hidden imports, small functions."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pnas_jax"
# The command modules may import lazily (fast `pnas --help`); config schemas may be long.
COMMAND_MODULES = {"cli.py", "demo.py", "latency/cli.py", "train/cli.py", "interop/cli.py"}
LONG_OK = {"train/search_config.py", "train/train_config.py", "latency/config.py"}
MAX_FUNCTION_LINES = 80


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


def _functions(tree):
  return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("package,forbidden", [
    ("pnas_jax.layers", ("pnas_jax.search_space", "pnas_jax.models", "pnas_jax.arch", "pnas_jax.train")),
    ("pnas_jax.search_space", ("pnas_jax.models", "pnas_jax.arch", "pnas_jax.latency", "pnas_jax.train")),
    ("pnas_jax.models", ("pnas_jax.arch", "pnas_jax.latency", "pnas_jax.train")),
    ("pnas_jax.arch", ("pnas_jax.latency", "pnas_jax.train")),
    ("pnas_jax.latency", ("pnas_jax.train",)),
])
def test_importing_a_layer_pulls_in_no_layer_above_it(package, forbidden):
  code = (f"import sys, {package}, importlib, pkgutil\n"
          f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
          "  if not m.name.endswith('.cli'):\n"
          "    importlib.import_module(m.name)\n"
          "print('\\n'.join(sorted(sys.modules)))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  loaded = [m for m in out.split() if m.startswith(forbidden)]
  assert loaded == [], f"importing {package} loaded {loaded}"


def test_no_package_import_inside_functions_outside_command_modules():
  found = []
  for name, tree in _modules():
    if name in COMMAND_MODULES:
      continue
    for fn in _functions(tree):
      for node in ast.walk(fn):
        mod = node.module if isinstance(node, ast.ImportFrom) else None
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if (mod or "").startswith("pnas_jax") or any(n.startswith("pnas_jax") for n in names):
          found.append(f"{name}:{node.lineno} in {fn.name}()")
  assert found == [], "imports inside functions (move them to the top of the module): " + ", ".join(found)


def test_functions_are_small():
  long = [f"{name}:{fn.lineno} {fn.name}() is {fn.end_lineno - fn.lineno + 1} lines"
          for name, tree in _modules() if name not in LONG_OK for fn in _functions(tree)
          if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
  assert long == [], f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)
