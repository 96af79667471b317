"""Only ``fleetkit/env.py`` reads the environment (issue 14).

An AST scan of ``src/fleetkit``: any other use of ``os.environ`` / ``os.getenv`` that is not
a write (``os.environ[k] = v``, ``del os.environ[k]``, ``os.environ.update(...)``, a
``pop`` whose result is dropped) fails, unless the enclosing function is in ``ALLOWED``
with its reason.  A new setting goes into env.py as a named, documented function.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fleetkit

PACKAGE = Path(fleetkit.__file__).parent
#: (module path under src/fleetkit, enclosing function's qualified name): why it may read
ALLOWED = {
    ("fleet/launch_plan.py", "child_env"): "a launched child's environment starts as a copy of ours",
    ("testing/seaweedfs.py", "SeaweedFS.start"): "the weed server's environment: ours plus its S3 keys",
    ("testing/workers.py", "_start_with_env"):
        "saves the parent's values of the variables it sets for a child, to restore them after the start",
}
#: os.environ methods that only change it (their result, if any, is not used as a value)
WRITE_METHODS = {"update", "clear", "__setitem__", "__delitem__"}
DROPPED_RESULT_METHODS = {"pop"}
READ_NAMES = {"environ", "environb", "getenv", "getenvb"}


def environment_reads(source: str, filename: str = "<src>") -> list[tuple[int, str, str]]:
    """(line, enclosing function's qualified name, source line) of each read of the environment."""
    tree = ast.parse(source, filename)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    os_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names if a.name == "os"}
    reads = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os" and \
                any(a.name in READ_NAMES for a in node.names):
            reads.append(node)      # a bare ``environ`` / ``getenv`` would hide the reads from this scan
        elif isinstance(node, ast.Attribute) and node.attr in READ_NAMES and \
                isinstance(node.value, ast.Name) and node.value.id in os_names and not _is_write(node, parents):
            reads.append(node)
    lines = source.splitlines()
    return sorted((n.lineno, _qualname(n, parents), lines[n.lineno - 1].strip()) for n in reads)


def _is_write(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    parent = parents.get(node)
    if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, (ast.Store, ast.Del)):
        return True
    if isinstance(parent, ast.Attribute) and isinstance(parents.get(parent), ast.Call) \
            and parents[parent].func is parent:
        call = parents[parent]
        return parent.attr in WRITE_METHODS or (
            parent.attr in DROPPED_RESULT_METHODS and isinstance(parents.get(call), ast.Expr))
    return False


def _qualname(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    names = []
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
    return ".".join(reversed(names)) or "<module>"


def _package_reads() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "env.py":
            continue
        for line, func, code in environment_reads(path.read_text(encoding="utf-8"), str(path)):
            found.setdefault((rel, func), []).append(f"src/fleetkit/{rel}:{line} ({func}): {code}")
    return found


def test_only_env_py_reads_the_environment():
    found = _package_reads()
    offending = [hit for key, hits in found.items() if key not in ALLOWED for hit in hits]
    assert not offending, ("environment read outside fleetkit/env.py: add a named setting there and call "
                           "it instead:\n" + "\n".join(offending))


def test_every_allowlist_entry_is_still_needed():
    stale = sorted(set(ALLOWED) - set(_package_reads()))
    assert not stale, f"allowlist entries that read nothing any more (remove them): {stale}"


@pytest.mark.parametrize("code", [
    "import os\nx = os.environ.get('A')",
    "import os\nx = os.environ['A']",
    "import os\nx = 'A' in os.environ",
    "import os\nx = os.getenv('A', '1')",
    "import os\nchild = {**os.environ, 'A': '1'}",
    "import os\nchild = dict(os.environ)",
    "import os\nx = os.environ.pop('A')",
    "import os\nx = os.environ.setdefault('A', '1')",
    "import os as o\nx = o.environ.get('A')",
    "from os import environ\n",
    "from os import getenv as g\n",
])
def test_the_scan_sees_each_kind_of_read(code):
    assert len(environment_reads(code)) == 1


@pytest.mark.parametrize("code", [
    "import os\nos.environ['A'] = '1'",
    "import os\ndel os.environ['A']",
    "import os\nos.environ.update(A='1')",
    "import os\nos.environ.pop('A', None)",
    "import os\nx = os.path.join('a', 'b')",
    "env = {}\nx = env.get('A')",
])
def test_the_scan_lets_writes_and_other_names_pass(code):
    assert environment_reads(code) == []


def test_the_scan_names_the_enclosing_function():
    code = "import os\nclass C:\n    def f(self):\n        return os.environ.get('A')\n"
    assert environment_reads(code) == [(4, "C.f", "return os.environ.get('A')")]
