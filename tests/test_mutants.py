"""The mutation audit's mutants (tests/mutants.py): one change each, none inside an error message."""

import ast

import mutants


def test_each_mutant_makes_exactly_one_documented_change(tmp_path):
    path = tmp_path / "module.py"
    path.write_text(
        "def f(x, y):\n"
        "    if x < 0:\n"
        "        raise ValueError(f'x must be >= {0 + 1 - 1}; got {x}')\n"
        "    return -x.sum() * y + 2.5\n"
    )
    listed = mutants.mutants(str(path))
    found = {m.change: m for m in listed}
    assert len(listed) == len(found) == 7
    # The raise line's comparison and arithmetic are left alone; everything else on lines 2 and 4 is mutated.
    assert set(found) == {"Lt -> LtE", "0 -> 1", "drop USub", ".sum -> .mean", "Mult -> Div", "Add -> Sub",
                          "2.5 -> 5.0"}
    assert all(m.line in (2, 4) for m in found.values())
    original = ast.dump(ast.parse(path.read_text()))
    for mutant in found.values():
        assert ast.dump(ast.parse(mutant.source)) != original
    namespace = {}
    exec(found["Mult -> Div"].source, namespace)

    class Array(float):
        def sum(self):
            return float(self)

    assert namespace["f"](Array(3.0), 2.0) == -3.0 / 2.0 + 2.5
