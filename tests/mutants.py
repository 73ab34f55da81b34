"""Mutation audit: which small changes to one pgjax module do its tests not notice?

    .venv/bin/python tests/mutants.py pgjax/losses.py tests/test_losses.py [more tests] [--workers 2]
    .venv/bin/python tests/mutants.py pgjax/losses.py --list          # the mutants, numbered, nothing run
    .venv/bin/python tests/mutants.py pgjax/losses.py tests/test_losses.py --only 11 26

Each mutant makes one change to the module: flips an operator (+ -, * /, ** to *, < <=, > >=, == !=, is / is not,
in / not in, and / or), drops a unary minus or a `not`, bumps a number (an int by 1, a float to twice itself, 0.0 to
1.0, True / False), or swaps a reduction or transcendental (max / min, sum / mean, any / all, exp / log, ...). Error
messages, f-strings and warnings are left alone. The mutant is written into a copy of the repository's tracked
files and the given tests run there (`pytest -x`, the copy first on PYTHONPATH); a mutant the tests pass is a
survivor, printed with its line. Read each survivor: many are equivalent (a default that only tunes speed or
tolerance, `axis=1` for `axis=-1` on 2-D arrays, a value a `jnp.where` never selects); the others are behaviour no
test checks. The tests first run on the unchanged module and must pass. Tests marked exact_compiler are left out
(they need XLA's default emitters); `--exact-compiler` runs those alone, e.g. the two-device checks of
tests/test_parallel.py. Not part of the suite (a mutant costs a test file's run, seconds to a minute).
"""

from __future__ import annotations

import argparse
import ast
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
          ast.FloorDiv: ast.Div}
COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
           ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
ATTRIBUTE = {"max": "min", "min": "max", "maximum": "minimum", "minimum": "maximum", "sum": "mean", "mean": "sum",
             "argmax": "argmin", "argmin": "argmax", "exp": "log", "log": "exp", "log1p": "expm1", "expm1": "log1p",
             "any": "all", "all": "any", "nanmax": "nanmin", "nanmin": "nanmax", "median": "mean",
             "softmax": "log_softmax", "log_softmax": "softmax"}
# Calls whose arguments are messages, not behaviour.
_MESSAGE_CALLS = {"warn", "add_argument", "print"}


@dataclass(frozen=True)
class Mutant:
    index: int
    line: int
    change: str
    source: str  # the whole mutated module


def _untouchable(tree: ast.AST) -> set[int]:
    """ids of the nodes inside raise statements, f-strings and message calls."""
    skip = set()
    for node in ast.walk(tree):
        message_call = (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
                        and getattr(node.func, "attr", getattr(node.func, "id", None)) in _MESSAGE_CALLS)
        if isinstance(node, (ast.Raise, ast.JoinedStr)) or message_call:
            skip.update(id(sub) for sub in ast.walk(node))
    return skip


def _sites(tree: ast.AST) -> list[tuple[ast.AST, int | None]]:
    """(node, which comparison operator) for every place a mutation applies, in a fixed order (`self.mean` is a
    field, left alone)."""
    skip, sites = _untouchable(tree), []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            sites.append((node, None))
        elif isinstance(node, ast.Compare):
            sites.extend((node, i) for i, op in enumerate(node.ops) if type(op) in COMPARE)
        elif isinstance(node, ast.BoolOp) or (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub,
                                                                                                     ast.Not))):
            sites.append((node, None))
        elif isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float)):
            sites.append((node, None))
        elif (isinstance(node, ast.Attribute) and node.attr in ATTRIBUTE
              and not (isinstance(node.value, ast.Name) and node.value.id == "self")):  # a field, not a reduction
            sites.append((node, None))
    return sites


def _mutate(node: ast.AST, which: int | None) -> tuple[ast.AST, str]:
    """Change `node` in place (or return its replacement) and describe the change."""
    if isinstance(node, ast.BinOp):
        old, node.op = type(node.op).__name__, BINARY[type(node.op)]()
        return node, f"{old} -> {type(node.op).__name__}"
    if isinstance(node, ast.Compare):
        old = type(node.ops[which]).__name__
        node.ops[which] = COMPARE[type(node.ops[which])]()
        return node, f"{old} -> {type(node.ops[which]).__name__}"
    if isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return node, f"-> {type(node.op).__name__}"
    if isinstance(node, ast.UnaryOp):
        return node.operand, f"drop {type(node.op).__name__}"
    if isinstance(node, ast.Constant):
        old, value = node.value, node.value
        node.value = (not value if isinstance(value, bool) else value + 1 if isinstance(value, int)
                      else 1.0 if value == 0.0 else 2 * value)
        return node, f"{old!r} -> {node.value!r}"
    old, node.attr = node.attr, ATTRIBUTE[node.attr]
    return node, f".{old} -> .{node.attr}"


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, which: int | None):
        self.target, self.which, self.change = target, which, ""

    def visit(self, node):
        if node is self.target:
            node, self.change = _mutate(node, self.which)
            return node
        return super().visit(node)


def mutants(path: str) -> list[Mutant]:
    """Every single-change mutant of the module at `path`, each as the whole mutated source."""
    with open(path) as f:
        source = f.read()
    count = len(_sites(ast.parse(source)))
    out = []
    for index in range(count):
        tree = ast.parse(source)  # a fresh tree per mutant: the same walk finds the same sites
        node, which = _sites(tree)[index]
        line = node.lineno
        replace = _Replace(node, which)
        tree = ast.fix_missing_locations(replace.visit(tree))
        out.append(Mutant(index, line, replace.change, ast.unparse(tree)))
    return out


def _copy_repository(destination: str) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.join(destination, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(destination, name))


def _run_tests(copy: str, tests: list[str], timeout: float, exact: bool = False) -> tuple[str, str]:
    """("survived" | "killed" | "timeout" | "no tests selected", pytest's output tail) for the tests run in `copy`."""
    # By default the older, faster-compiling emitters, as make test's first phase: the exact_compiler tests refuse to
    # run there (the conftest stops the whole session), so they are left out. `exact`: XLA's default emitters, as
    # make test's second phase, and only the exact_compiler tests.
    # No bytecode caches: a mutant of the same size written in the same second as the last would reuse its .pyc.
    env = dict(os.environ, PYTHONPATH=copy, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PGJAX_TEST_FAST_COMPILE", None)
    if not exact:
        env["PGJAX_TEST_FAST_COMPILE"] = "1"
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m",
               "exact_compiler" if exact else "not exact_compiler", *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", ""  # a mutant that hangs is caught (a while_loop that never ends)
    if done.returncode == 5:  # pytest selected no test (e.g. --exact-compiler given tests not marked so)
        return "no tests selected", (done.stdout + done.stderr)[-2000:]
    return ("survived" if done.returncode == 0 else "killed"), (done.stdout + done.stderr)[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="the module to mutate, e.g. pgjax/losses.py")
    parser.add_argument("tests", nargs="*", help="test files (or node ids) to run against each mutant")
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument("--only", type=int, nargs="+", default=None, help="run these mutant numbers only")
    parser.add_argument("--workers", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as hung")
    parser.add_argument("--exact-compiler", action="store_true",
                        help="run only the given tests marked exact_compiler, with XLA's default emitters")
    args = parser.parse_args(argv)
    module = os.path.relpath(os.path.abspath(args.module), ROOT)
    if not os.path.isfile(os.path.join(ROOT, module)):
        parser.error(f"module: no file {module} in {ROOT}")
    with open(os.path.join(ROOT, module)) as f:
        lines = f.read().splitlines()
    everything = mutants(os.path.join(ROOT, module))
    if args.only is not None and not all(0 <= i < len(everything) for i in args.only):
        parser.error(f"--only: {module} has mutants 0 to {len(everything) - 1}; got {args.only}")
    chosen = everything if args.only is None else [everything[i] for i in args.only]

    def describe(m: Mutant) -> str:
        return f"#{m.index} L{m.line} {m.change:<22} | {lines[m.line - 1].strip()[:90]}"

    if args.list:
        print("\n".join(describe(m) for m in chosen))
        return 0
    if not args.tests:
        parser.error("tests: give the test files to run (or --list)")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    # The tests must pass on the module as it is, or every mutant would read as killed.
    with tempfile.TemporaryDirectory(prefix="pgjax-mutant-") as copy:
        _copy_repository(copy)
        outcome, output = _run_tests(copy, args.tests, args.timeout, args.exact_compiler)
    if outcome != "survived":
        print(output)
        print(f"the tests do not pass on the unchanged {module} ({outcome}): nothing to measure mutants against")
        return 1
    todo: queue.Queue[Mutant] = queue.Queue()
    for mutant in chosen:
        todo.put(mutant)
    results, lock, start = {}, threading.Lock(), time.time()

    def worker() -> None:
        with tempfile.TemporaryDirectory(prefix="pgjax-mutant-") as copy:
            _copy_repository(copy)
            target = os.path.join(copy, module)
            while True:
                try:
                    mutant = todo.get_nowait()
                except queue.Empty:
                    return
                with open(target, "w") as f:
                    f.write(mutant.source)
                outcome, _ = _run_tests(copy, args.tests, args.timeout, args.exact_compiler)
                with lock:
                    results[mutant.index] = outcome
                    print(f"[{len(results)}/{len(chosen)} {time.time() - start:.0f}s] {outcome:<8} {describe(mutant)}",
                          flush=True)

    threads = [threading.Thread(target=worker) for _ in range(min(args.workers, len(chosen)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    survivors = [m for m in chosen if results.get(m.index) == "survived"]
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutants of {module} killed (or hung); "
          f"{len(survivors)} survived:")
    print("\n".join(describe(m) for m in survivors) or "(none)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
