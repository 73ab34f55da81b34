"""experiments/offline_gymnax.py end to end at tiny sizes: every estimator runs, the files agree with each other, and
each number the script prints is checked against an independent computation from what it logged (the datasets, the
target network, DualDICE's ratios and FQE's Q, captured as the script ran): Monte Carlo values by NumPy loops, the
behaviour policy's log-probabilities, PDIS / WIS / ESS, the reference, offline and PDIS gradients (jax.grad of
surrogates written here), and the improvement steps (Adam's first step, lr sign(g), up the offline gradient and, the
control, up the reference gradient) with their paired comparisons; `improve` against Adam written out in NumPy."""

import importlib
import json
import os
import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import offline_gymnax

from pgjax import tables
from pgjax.offline import neural

collect_module = importlib.import_module("pgjax.offline.collect_env")  # the package exports the function by that name

VALUE_METHODS = [
    "on-policy Monte Carlo (reference)", "behaviour average (naive)", "neural DualDICE",
    "neural DualDICE (normalised)", "neural FQE", "DualDICE w + FQE Q (doubly robust)", "PDIS", "WIS",
]
TINY = ["--ppo-steps", "2048", "--num-episodes", "8", "--horizon", "50", "--mc-episodes", "16",
        "--dualdice-steps", "20", "--dualdice-batch-size", "64", "--fqe-steps", "20", "--fqe-batch-size", "64",
        "--reference-episodes", "8", "--reference-chunks", "2", "--improve-steps", "1", "--improve-learning-rate",
        "0.05", "--improve-control", "--datasets", "2"]
# The script's gamma and epsilon; a step large enough to change some of the improved policy's 16 episodes.
GAMMA, EPSILON, LEARNING_RATE = 0.99, 0.3, 0.05


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The script's run, with what it computed from captured: the PPO target (network, params), every
    `collect_env` call in order (key, dataset) and the first DualDICE / FQE fits."""
    out = str(tmp_path_factory.mktemp("offline-gymnax"))
    seen = SimpleNamespace(collects=[], dice=[], fqe=[])

    def capture(fn, into):
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            into(args, result)
            return result
        return wrapped

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(offline_gymnax, "train_target",
                      capture(offline_gymnax.train_target, lambda a, r: setattr(seen, "target", r)))
        patch.setattr(offline_gymnax, "collect_env",
                      capture(offline_gymnax.collect_env, lambda a, r: seen.collects.append((a[0], r))))
        patch.setattr(neural, "neural_dualdice", capture(neural.neural_dualdice, lambda a, r: seen.dice.append(r)))
        patch.setattr(neural, "fitted_q_evaluation",
                      capture(neural.fitted_q_evaluation, lambda a, r: seen.fqe.append(r)))
        # 20 DualDICE steps cannot settle on a saddle point: the run says so (and records each gap in its table).
        compiled = collect_module._collect_env._cache_size()
        with pytest.warns(RuntimeWarning, match="neural_dualdice did not settle on a saddle point"):
            assert offline_gymnax.main([*TINY, "--out", out]) == 0
    # Rollouts compiled: mu's 8 episodes (both datasets), pi's 16 and 8, and one for both improved policies.
    seen.rollout_compiles = collect_module._collect_env._cache_size() - compiled
    # collect_env's calls: the logged data, the Monte Carlo episodes, the reference episodes, the episodes of the
    # policy improved offline and of the one improved on the reference episodes (the control), the second dataset.
    assert [d.rewards.shape[0] for _, d in seen.collects] == [8, 16, 8, 16, 16, 8]
    assert seen.rollout_compiles == 4  # the improved policies' params are traced: one rollout for both
    rows = tables.read_csv(os.path.join(out, "results.csv"))
    seen.values = {r["method"]: r for r in rows if r["quantity"] == "value"}
    seen.gradients = {r["method"]: r for r in rows if r["quantity"] == "gradient"}
    return out, seen


@pytest.fixture(scope="module")
def out(run):
    return run[0]


def reward_to_go(data) -> np.ndarray:
    rewards, mask = np.asarray(data.rewards, np.float64), np.asarray(data.mask)
    out = np.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        running = 0.0
        for t in reversed(range(rewards.shape[1])):
            running = (rewards[i, t] + GAMMA * running) if mask[i, t] else 0.0
            out[i, t] = running
    return out


def discounted_returns(data) -> np.ndarray:
    """Each episode's discounted return G_0 (its valid steps are a prefix of the row): [N]."""
    return reward_to_go(data)[:, 0]


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def actor_log_probs(seen, actor, observations, actions):
    """log pi_actor(a|s) of the target network with its actor's parameters replaced: [N, T]."""
    network, params, _ = seen.target
    dist = network.apply({"params": {**params["params"], "actor": actor}}, observations)[0]
    return dist.log_prob(actions)


def gradient_of(seen, surrogate) -> np.ndarray:
    """jax.grad of surrogate(actor) at the target's actor, flattened (ravel_pytree)."""
    actor = seen.target[1]["params"]["actor"]
    return np.asarray(ravel_pytree(jax.grad(surrogate)(actor))[0], np.float64)


def note_number(note: str, label: str) -> float:
    return float(re.search(re.escape(label) + r" (-?[\d.]+)", note).group(1))


def test_monte_carlo_and_naive_values_are_the_discounted_returns_of_their_episodes(run):
    _, seen = run
    logged, on_policy = seen.collects[0][1], seen.collects[1][1]
    mc = discounted_returns(on_policy)
    row = seen.values["on-policy Monte Carlo (reference)"]
    assert float(row["estimate"]) == pytest.approx(mc.mean(), rel=1e-6)
    assert row["note"] == f"+- {mc.std(ddof=1) / np.sqrt(16):.2f} (1 s.e.)"
    naive = seen.values["behaviour average (naive)"]
    assert float(naive["estimate"]) == pytest.approx(discounted_returns(logged).mean(), rel=1e-6)


def test_behaviour_is_the_epsilon_mixture_and_the_monte_carlo_episodes_pi(run):
    _, seen = run
    network, params, _ = seen.target
    for (_, data), eps in ((seen.collects[0], EPSILON), (seen.collects[5], EPSILON), (seen.collects[1], 0.0)):
        probs = np.asarray(network.apply(params, data.observations)[0].probs, np.float64)
        chosen = np.take_along_axis(probs, np.asarray(data.actions)[..., None], -1)[..., 0]
        expected = np.log((1 - eps) * chosen + eps / 2)  # CartPole: 2 actions
        mask = np.asarray(data.mask)
        np.testing.assert_allclose(np.asarray(data.behaviour_log_probs)[mask], expected[mask], rtol=1e-4, atol=1e-5)
    keys = [jax.random.key_data(key) for key, _ in seen.collects]
    assert not np.array_equal(keys[2], keys[1])  # the reference gradient's episodes are not the Monte Carlo ones
    assert not np.array_equal(keys[5], keys[0])  # a second dataset, not the first again


def test_importance_sampling_rows_match_numpy(run):
    _, seen = run
    data = seen.collects[0][1]
    mask = np.asarray(data.mask)
    target = np.asarray(actor_log_probs(seen, seen.target[1]["params"]["actor"], data.observations, data.actions),
                        np.float64)
    rho = np.where(mask, np.exp(target - np.asarray(data.behaviour_log_probs, np.float64)), 1.0)
    rewards = np.where(mask, np.asarray(data.rewards, np.float64), 0.0)
    powers = GAMMA ** np.arange(rewards.shape[1])
    pdis = np.mean(np.sum(np.cumprod(rho, axis=1) * powers * rewards, axis=1))
    weights = np.prod(rho, axis=1)
    wis = np.sum(weights * discounted_returns(data)) / np.sum(weights)
    assert float(seen.values["PDIS"]["estimate"]) == pytest.approx(pdis, rel=1e-4)
    assert float(seen.values["WIS"]["estimate"]) == pytest.approx(wis, rel=1e-4)
    ess = np.sum(weights) ** 2 / np.sum(weights**2)
    assert seen.values["WIS"]["note"] == f"trajectory-weight ESS {ess:.1f} of 8"


def reference_gradients(seen):
    """Per reference episode, sum_t gamma^t grad log pi(a_t|s_t) (G_t - b(s_t)) with b PPO's critic, and without
    b: two [8, D] arrays."""
    network, params, _ = seen.target
    data = seen.collects[2][1]
    mask = np.asarray(data.mask)
    powers = GAMMA ** np.arange(mask.shape[1])
    critic = np.asarray(network.apply(params, data.observations)[1], np.float64)
    per_episode = {}
    for name, baseline in (("plain", 0.0), ("critic", critic)):
        weights = np.where(mask, powers * (reward_to_go(data) - baseline), 0.0)
        per_episode[name] = np.stack([
            gradient_of(seen, lambda a, i=i: jnp.sum(actor_log_probs(seen, a, data.observations[i], data.actions[i])
                                                      * weights[i]))
            for i in range(mask.shape[0])])
    return per_episode


@pytest.fixture(scope="module")
def episodes(run):
    return reference_gradients(run[1])


def test_reference_gradient_is_the_theorem_form_with_its_noise(run, episodes):
    _, seen = run
    plain, critic = episodes["plain"].mean(0), episodes["critic"].mean(0)
    row = seen.gradients["on-policy, critic baseline (reference)"]
    assert float(row["estimate"]) == pytest.approx(np.linalg.norm(critic), rel=1e-4)
    plain_row = seen.gradients["on-policy, no baseline"]
    assert float(plain_row["estimate"]) == pytest.approx(np.linalg.norm(plain), rel=1e-4)
    assert float(plain_row["cosine"]) == pytest.approx(cosine(plain, critic), abs=1e-4)
    for name, r in (("critic", row), ("plain", plain_row)):  # 2 chunks: episodes 0-3 and 4-7
        g = episodes[name]
        halves = [g[:4].mean(0), g[4:].mean(0)]
        assert note_number(r["note"], "half-split cosine") == pytest.approx(cosine(*halves), abs=1.5e-3), name
        chunk_var = np.var(np.stack(halves), axis=0, ddof=1)
        relative_se = np.sqrt(chunk_var.sum() / 2) / np.linalg.norm(g.mean(0))
        assert note_number(r["note"], "relative s.e.") == pytest.approx(relative_se, abs=1.5e-3), name


def offline_directions(seen):
    """g = 1/(1-gamma) E_D[w grad log pi(a|s) weight] for the three offline rows (w from the captured DualDICE fit,
    Q from the captured FQE fit, V_hat = sum_a pi Q_hat), and the PDIS value's gradient."""
    data = seen.collects[0][1]
    network, params, _ = seen.target
    mask = np.asarray(data.mask)
    ratios = np.asarray(neural.neural_dualdice_ratio(seen.dice[0][0], data.observations, data.actions))
    q_all = np.asarray(seen.fqe[0][1](data.observations))
    probs = np.asarray(network.apply(params, data.observations)[0].probs)
    q_sa = np.take_along_axis(q_all, np.asarray(data.actions)[..., None], -1)[..., 0]
    advantage = q_sa - np.sum(probs * q_all, -1)

    def direction(w, weight):
        scale = np.where(mask, w * weight, 0.0) / mask.sum() / (1 - GAMMA)
        return gradient_of(seen, lambda a: jnp.sum(actor_log_probs(seen, a, data.observations, data.actions) * scale))

    rewards = np.where(mask, np.asarray(data.rewards), 0.0) * GAMMA ** np.arange(mask.shape[1])

    def pdis(a):
        log_rho = jnp.where(mask, actor_log_probs(seen, a, data.observations, data.actions)
                            - data.behaviour_log_probs, 0.0)
        return jnp.mean(jnp.sum(jnp.exp(jnp.cumsum(log_rho, axis=1)) * rewards, axis=1))

    return {"offline DualDICE w x FQE Q": direction(ratios, q_sa),
            "offline DualDICE w x FQE advantage": direction(ratios, advantage),
            "offline w = 1 x FQE advantage (control)": direction(1.0, advantage),
            "PDIS": gradient_of(seen, pdis)}


@pytest.fixture(scope="module")
def directions(run, episodes):
    return offline_directions(run[1]), episodes["critic"].mean(0)


def test_offline_gradients_are_the_ratio_weighted_theorem_and_pdis_gradient(run, directions):
    _, seen = run
    offline, reference = directions
    for method, g in offline.items():
        row = seen.gradients[method]
        assert float(row["estimate"]) == pytest.approx(np.linalg.norm(g), rel=1e-3), method
        assert float(row["cosine"]) == pytest.approx(cosine(g, reference), abs=1e-3), method
        assert float(row["error"]) == pytest.approx(np.linalg.norm(g - reference), rel=1e-3), method


@pytest.mark.parametrize("name, collected", [("offline g_off (w x advantage)", 3),
                                             ("on-policy reference (control)", 4)])
def test_improvement_is_one_adam_step_up_its_direction_on_common_random_numbers(run, directions, name, collected):
    # The offline round steps up the offline advantage gradient; the control up the reference gradient itself.
    _, seen = run
    offline, reference = directions
    (mc_key, mc_data), (new_key, new_data) = seen.collects[1], seen.collects[collected]
    assert np.array_equal(jax.random.key_data(new_key), jax.random.key_data(mc_key))  # paired episodes
    old, new = discounted_returns(mc_data), discounted_returns(new_data)
    assert np.any(new != old)  # else the change's sign and spread could not be checked
    row = seen.values[f"pi + 1 Adam steps on {name}"]
    assert float(row["estimate"]) == pytest.approx(new.mean(), rel=1e-6)
    assert float(row["error"]) == pytest.approx(new.mean() - old.mean(), abs=1e-4)
    assert note_number(row["note"], "paired s.e.") == pytest.approx((new - old).std(ddof=1) / 4, abs=6e-3)
    # Adam's first step is lr m / (sqrt(v) + eps) with m = g, v = g^2: lr sign(g) up the direction.
    g = offline["offline DualDICE w x FQE advantage"] if name.startswith("offline") else reference
    step = LEARNING_RATE * g / (np.abs(g) + 1e-8)
    assert note_number(row["note"], "step cosine with the reference gradient") == pytest.approx(
        cosine(step, reference), abs=1.5e-3)
    actor = seen.target[1]["params"]["actor"]
    flat, unravel = ravel_pytree(actor)
    new_actor = unravel(flat + jnp.asarray(step, flat.dtype))
    # The improved policy's episodes log its own log-probabilities: those of the stepped actor.
    mask = np.asarray(new_data.mask)
    expected = np.asarray(actor_log_probs(seen, new_actor, new_data.observations, new_data.actions))
    np.testing.assert_allclose(np.asarray(new_data.behaviour_log_probs)[mask], expected[mask], rtol=1e-4, atol=1e-5)


def test_improve_takes_adam_steps_up_a_direction_recomputed_at_each_step():
    # Ascent on -|a - c|^2 / 2 (direction c - a, recomputed at the moving point), against Adam written out in NumPy.
    c = {"w": np.array([1.0, -2.0, 0.5], np.float32), "b": np.array([3.0], np.float32)}
    a = {"w": np.zeros(3, np.float32), "b": np.array([-1.0], np.float32)}
    got = offline_gymnax.improve(a, lambda x: jax.tree_util.tree_map(jnp.subtract, c, x), 3, 0.1)
    for leaf in ("w", "b"):
        x, m, v = a[leaf].astype(np.float64), 0.0, 0.0
        for t in range(1, 4):
            g = c[leaf] - x
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
            x = x + 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(np.asarray(got[leaf]), x, rtol=1e-5)


def test_every_estimate_is_written_finite_and_scored_against_monte_carlo(out):
    rows = tables.read_csv(os.path.join(out, "results.csv"))
    values = {r["method"]: r for r in rows if r["quantity"] == "value"}
    assert list(values)[: len(VALUE_METHODS)] == VALUE_METHODS
    assert any(m.startswith("pi + 1 Adam steps") for m in values)
    gradients = [r for r in rows if r["quantity"] == "gradient"]
    assert len(gradients) == 6 and gradients[0]["method"].startswith("on-policy, critic baseline")
    truth = float(values["on-policy Monte Carlo (reference)"]["estimate"])
    assert 10 < truth < 40  # a barely trained CartPole policy lasts ~20-30 steps
    for r in values.values():
        estimate = float(r["estimate"])
        assert np.isfinite(estimate), r
        np.testing.assert_allclose(float(r["relative_error"]), (estimate - truth) / truth, rtol=1e-9, atol=1e-12)
    for r in gradients:
        assert np.isfinite(float(r["estimate"])) and -1 <= float(r["cosine"]) <= 1, r
    assert re.fullmatch(r"mean ratio -?\d+\.\d{3}, saddle gap \d+\.\d{3} \(unsettled above 0\.2\)",
                        values["neural DualDICE"]["note"]), values["neural DualDICE"]["note"]
    # CartPole pays r = 1 on every step, so the self-normalised DualDICE value is 1 / (1 - gamma) whatever w is.
    np.testing.assert_allclose(float(values["neural DualDICE (normalised)"]["estimate"]), 100.0, rtol=1e-5)


def test_dataset_table_repeats_dataset_0_and_config_records_the_flags(out):
    rows = tables.read_csv(os.path.join(out, "datasets.csv"))
    methods = VALUE_METHODS[1:]  # all but the reference
    assert [(int(r["dataset"]), r["method"]) for r in rows] == [(k, m) for k in range(2) for m in methods]
    first = {r["method"]: float(r["estimate"]) for r in tables.read_csv(os.path.join(out, "results.csv"))
             if r["quantity"] == "value"}
    for r in rows[: len(methods)]:
        assert float(r["estimate"]) == pytest.approx(first[r["method"]], rel=1e-12)
    second = {r["method"]: float(r["estimate"]) for r in rows[len(methods):]}
    assert second["PDIS"] != first["PDIS"]  # a fresh log of mu, not dataset 0 again
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["fqe"]["batch_size"] == 64 and config["dualdice"]["batch_size"] == 64 and config["datasets"] == 2


@pytest.mark.parametrize("flag", ["--dualdice-batch-size", "--fqe-batch-size"])
def test_batch_larger_than_any_dataset_is_refused_before_training(flag, capsys):
    # 8 episodes x 50 steps hold at most 400 transitions: refused while parsing, before PPO trains for minutes.
    small = ["--num-episodes", "8", "--horizon", "50", "--dualdice-batch-size", "64", "--fqe-batch-size", "64"]
    with pytest.raises(SystemExit) as exc:
        offline_gymnax.parse_args([*small, flag, "401"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} (401) is larger than" in err and "--num-episodes x --horizon = 400" in err
    assert getattr(offline_gymnax.parse_args([*small, flag, "400"]), flag[2:].replace("-", "_")) == 400  # the bound


def test_one_monte_carlo_episode_is_refused(capsys):
    # One episode has no spread: the reference's standard error was printed as nan after minutes of training.
    with pytest.raises(SystemExit) as exc:
        offline_gymnax.parse_args(["--mc-episodes", "1"])
    assert exc.value.code == 2 and "--mc-episodes must be >= 2" in capsys.readouterr().err
    assert offline_gymnax.parse_args(["--mc-episodes", "2"]).mc_episodes == 2


def test_a_discount_that_rounds_to_one_in_float32_is_refused_while_parsing(capsys):
    # The script computes in float32: 1 - 1e-11 was taken after minutes of PPO, then neural DualDICE warned and
    # returned 1.8e11 while FQE diverged; 1 - 1e-7 (0.99999988 in float32) is kept.
    with pytest.raises(SystemExit) as exc:
        offline_gymnax.parse_args(["--discount", "0.99999999999"])
    assert exc.value.code == 2
    assert "--discount 0.99999999999 rounds to 1.0 in float32, which this script computes in" in capsys.readouterr().err
    assert offline_gymnax.parse_args(["--discount", "0.9999999"]).discount == 0.9999999
