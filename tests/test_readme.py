"""The README's Python examples run, and do what their comments say.

Each ```python block is taken from README.md as written. The only edits are size reductions (`_shrink`), each of
which must match the README exactly once, so an example that changes makes this test fail until it is updated.
"""

import os
import re
import textwrap
import warnings

import jax
import numpy as np
import pytest

from subprocess_env import ROOT, run_cpu_python


def _python_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def _block(first_line: str) -> str:
    """The README block whose first line starts with `first_line` (exactly one must)."""
    found = [b for b in _python_blocks() if b.startswith(first_line)]
    assert len(found) == 1, f"README.md: expected one ```python block starting {first_line!r}, found {len(found)}"
    return found[0]


def _shrink(code: str, *replacements: tuple[str, str]) -> str:
    for old, new in replacements:
        assert code.count(old) == 1, f"README.md example changed: {old!r} no longer appears exactly once"
        code = code.replace(old, new)
    return code


def test_training_examples_run_as_documented():
    """Training, the grid, seeds over every core and one seed over two cores, in one fresh process (the device
    count must be chosen before JAX starts, as the README says), at 4 updates instead of 976."""
    training = _shrink(_block("import jax\nfrom pgjax.algos import ppo"),
                       ("total_timesteps=500_000", "total_timesteps=2_048"))
    sharded = _block("import jax\nfrom pgjax import parallel")
    head, tail = sharded.split("parallel.use_cpu_devices()", 1)
    head, tail = head + "parallel.use_cpu_devices()", tail.split("\n", 1)[1]
    split = _shrink(_block("config = ppo.PPOConfig(split_actor_critic=True)"),
                    ("PPOConfig(split_actor_critic=True)", "PPOConfig(split_actor_critic=True, total_timesteps=2_048)"))
    checks = textwrap.dedent(
        """
        assert config.num_updates == U == 4, U
        assert one_device.metrics["episode_return"].shape == (8, U)
        assert grid.metrics["episode_return"].shape == (3, 8, U)
        assert len(jax.devices()) == len(os.sched_getaffinity(0))
        # vmap_sharded(train)(keys) = jax.jit(jax.vmap(train))(keys), to float32 rounding
        flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])
        whole = flat(one_device.agent.params)
        np.testing.assert_allclose(flat(sharded.agent.params), whole, rtol=1e-5, atol=1e-6)
        # the grid's 2.5e-4 row is the 8-seed run (the config's learning rate); the other rows differ
        assert learning_rate == 2.5e-4
        row = lambda i: flat(jax.tree_util.tree_map(lambda x: x[i], grid.agent.params))
        np.testing.assert_allclose(row(1), whole, rtol=1e-5, atol=1e-6)
        assert np.max(np.abs(row(0) - whole)) > 1e-4 and np.max(np.abs(row(2) - whole)) > 1e-4
        assert config.split_actor_critic and out.metrics["episode_return"].shape == (U,)
        assert np.all(np.isfinite(jax.tree_util.tree_leaves(out.agent.params)[0]))
        print("OK")
        """
    )
    script = "\n".join(["import os", "import numpy as np", head, training, "one_device = out", tail,
                        "sharded = out", "U, learning_rate = config.num_updates, config.learning_rate", split, checks])
    done = run_cpu_python(script)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout[-2000:] + done.stderr[-4000:]


def test_offline_example_runs_as_documented(tmp_path, monkeypatch):
    """The offline example on Taxi as written, with 5 policy improvement steps instead of 150."""
    import pgjax.offline as off
    import pgjax.tabular as tab

    monkeypatch.chdir(tmp_path)  # it writes taxi.npz
    code = _shrink(_block("import jax, optax, pgjax.offline as off"),
                   ("optax.adam(0.5), 150)", "optax.adam(0.5), 5)"))
    scope: dict = {}
    with warnings.catch_warnings():  # a few of the 3000 pairs may never be logged (at key 0: 0.06% of pi's occupancy)
        warnings.simplefilter("ignore", off.CoverageWarning)
        exec(code, scope)
    assert os.path.exists(tmp_path / "taxi.npz")
    mdp, pi, data = scope["mdp"], scope["pi"], scope["data"]
    assert data.observations.shape == (300, 200)  # reloaded from taxi.npz
    assert scope["w"].shape == (500, 6) and np.all(np.asarray(scope["w"]) >= 0)
    assert scope["g"].shape == (3000,) and np.all(np.isfinite(np.asarray(scope["g"])))
    assert scope["run"].thetas.shape == (6, 3000)
    truth = float(tab.expected_return(mdp, pi))
    assert abs(float(scope["j"]) - truth) < 0.01 * abs(truth), (float(scope["j"]), truth)  # 0.02% off at key 0


def test_tabular_example_and_its_error_message():
    code = _block("import jax\nfrom pgjax import tabular as T")
    scope: dict = {}
    exec(code, scope)
    np.testing.assert_allclose(np.asarray(scope["grad"]), np.asarray(scope["grad_autodiff"]), rtol=1e-4, atol=1e-5)
    assert scope["grads"].shape == (1024, 40)
    # 1024 MDPs in one call: each row is that MDP's own gradient
    one = jax.tree_util.tree_map(lambda x: x[3], scope["mdps"])
    np.testing.assert_allclose(np.asarray(scope["grads"][3]),
                               np.asarray(scope["T"].policy_gradient(one, scope["theta"], scope["features"])),
                               rtol=1e-4, atol=1e-5)

    lines = _block("T.MDP(").strip().split("\n")  # pairs: a call, then "# ValueError: <its message>"
    assert len(lines) == 4
    for call, comment in zip(lines[::2], lines[1::2]):
        expected = comment.removeprefix("# ValueError: ")
        with pytest.raises(ValueError) as err:
            exec(call, scope)
        assert str(err.value) == expected


def test_batch_of_tabular_mdps_example():
    """The environment-variants example (16 MDPs in one compile) as written, at 4 updates instead of 500:
    one row of metrics per MDP, and other MDPs give other returns (test_env_variants checks each lane against its
    MDP's own run)."""
    code = _shrink(_block("import jax\nimport jax.numpy as jnp\nfrom pgjax import envs"),
                   ('"num_actions": 2},', '"num_actions": 2}, total_timesteps=4 * 2000,'))
    scope: dict = {}
    exec(code, scope)
    returns = np.asarray(scope["out"].metrics["episode_return"])
    assert returns.shape == (16, 4) and np.all(np.isfinite(returns))
    assert len(np.unique(returns[:, 0])) > 8
