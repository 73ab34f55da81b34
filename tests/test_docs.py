"""The docs stay true to the code: every public function and class of pgjax has a docstring, and every pgjax name the
README writes (the maths-to-code table included) exists. Imports only: nothing compiles."""

import contextlib
import functools
import importlib
import inspect
import os
import pkgutil
import re

import pgjax

ROOT = os.path.join(os.path.dirname(__file__), "..")
# A code span naming a file (`presets.py`, `evaluation.csv`), not an attribute.
FILE_SUFFIX = re.compile(r"\.(py|csv|json|png|npz|md|ipynb|txt|gz)\b")


@functools.cache
def _modules() -> dict[str, tuple[str, ...]]:
    """Every pgjax module by its short name ('tabular', 'ppo', ...; 'evaluation' names three) and 'pgjax' itself."""
    found = {"pgjax": ("pgjax",)}
    for info in pkgutil.walk_packages(pgjax.__path__, "pgjax."):
        short = info.name.rsplit(".", 1)[-1]
        found[short] = (*found.get(short, ()), info.name)
    return found


def _resolve(dotted: str):
    """The object a README name such as `tabular.policy_gradient` or `pgjax.offline.neural.FQEConfig` refers to (a
    short module name that several modules share: the first that has the rest); AttributeError / ImportError if
    there is none."""
    first, *rest = dotted.split(".")
    *others, last = _modules()[first]
    for module in others:
        with contextlib.suppress(AttributeError, ImportError):
            return _attributes(importlib.import_module(module), rest)
    return _attributes(importlib.import_module(last), rest)


def _attributes(obj, names: list[str]):
    for name in names:
        try:
            obj = getattr(obj, name)
        except AttributeError:  # a submodule not imported by its package
            obj = importlib.import_module(f"{obj.__name__}.{name}")
    return obj


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_every_public_function_and_class_has_a_docstring():
    missing, seen = [], 0
    for module_name in (full for short, names in _modules().items() if short != "pgjax" for full in names):
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue  # private, or imported from elsewhere (checked where it is defined)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                seen += 1
                if not (obj.__doc__ or "").strip():
                    missing.append(f"{module_name}.{name}")
    assert seen > 300, seen  # the walk found the package (372 public functions and classes on 2026-12-06)
    assert not missing, f"public functions and classes without a docstring: {missing}"


def test_every_pgjax_name_in_the_readme_exists():
    modules, names = _modules(), []
    for span in re.findall(r"`([^`\n]+)`", _readme()):
        match = re.match(r"[a-z_]+(?:\.[A-Za-z_]\w*)+", span)
        if match and match.group(0).split(".")[0] in modules and not FILE_SUFFIX.search(span):
            names.append(match.group(0))
    assert len(names) > 100, len(names)  # the README names its functions (~110 on 2026-12-06)
    unresolved = []
    for name in names:
        try:
            _resolve(name)
        except (AttributeError, ImportError):
            unresolved.append(name)
    assert not unresolved, f"README.md names pgjax objects that do not exist: {unresolved}"


def test_maths_to_code_table_names_exist():
    """The table under "The maths, next to the code": a bare name in a cell (`log_policy` after
    `tabular.softmax_policy(...)`) belongs to the module of the dotted name before it; test references exist."""
    section = _readme().split("## The maths, next to the code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Equation")]
    assert len(rows) > 20, len(rows)
    problems = []
    for row in rows:
        module = None
        for span in re.findall(r"`([^`]+)`", row.rstrip(" |").rsplit(" | ", 1)[-1]):
            if "/" in span:  # tests/test_x.py::test_name
                path, _, test = span.partition("::")
                if not os.path.exists(os.path.join(ROOT, path)):
                    problems.append(span)
                elif test:
                    with open(os.path.join(ROOT, path)) as f:
                        if f"def {test}(" not in f.read():
                            problems.append(span)
                continue
            match = re.match(r"[A-Za-z_][\w.]*", span)
            if match is None or "=" in span.split("(")[0]:
                continue  # arguments (`episodic=True, ...`), not a name
            name = match.group(0).removeprefix("pgjax.")
            try:
                if "." in name:
                    obj = _resolve(name)
                    parent = _resolve(name.rsplit(".", 1)[0])
                    module = obj if inspect.ismodule(obj) else parent
                elif module is None:
                    problems.append(f"{span} (a bare name with no module before it)")
                else:
                    getattr(module, name)
            except (AttributeError, ImportError, KeyError):
                problems.append(span)
    assert not problems, f"the maths-to-code table names what does not exist: {problems}"
