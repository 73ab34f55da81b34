"""Actor/critic networks: shapes for single and batched observations, initialisation, parameter layout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import nets
from pgjax.distributions import Categorical, DiagGaussian
from pgjax.nets import MLP, Actor, ActorCritic, Critic

OBS_DIM = 4


@pytest.fixture(scope="module")
def obs():
    return jax.random.normal(jax.random.key(0), (5, 3, OBS_DIM))  # [T, B, obs_dim]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("discrete", [True, False])
def test_actor_critic_shapes(obs, discrete, shared):
    net = ActorCritic(action_dim=2, discrete=discrete, hidden_sizes=(8, 8), shared=shared)
    params = net.init(jax.random.key(1), obs[0, 0])
    apply = jax.jit(net.apply) if shared else net.apply
    for x in (obs[0, 0], obs[0], obs):
        dist, value = apply(params, x)
        assert value.shape == x.shape[:-1]
        if discrete:
            assert isinstance(dist, Categorical) and dist.logits.shape == (*x.shape[:-1], 2)
        else:
            assert isinstance(dist, DiagGaussian) and dist.mean.shape == dist.log_std.shape == (*x.shape[:-1], 2)
        assert dist.entropy().shape == x.shape[:-1]
    # A row of a batch equals the single-observation call.
    dist_b, value_b = apply(params, obs)
    dist_1, value_1 = apply(params, obs[2, 1])
    # float32 batched and single kernels round differently (outputs near 0 differ by ~1e-9 absolute).
    np.testing.assert_allclose(value_b[2, 1], value_1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.tree.leaves(dist_b)[0][2, 1], jax.tree.leaves(dist_1)[0], rtol=1e-6, atol=1e-7)
    # method="policy" / "value" compute the call's two outputs alone (rollouts use them), in either layout.
    dist_e, value_e = net.apply(params, obs)  # op by op, as the two methods below
    for leaf, alone in zip(jax.tree.leaves(dist_e), jax.tree.leaves(net.apply(params, obs, method="policy"))):
        np.testing.assert_array_equal(leaf, alone)
    np.testing.assert_array_equal(value_e, net.apply(params, obs, method="value"))


def test_parameter_layout_and_log_std(obs):
    net = ActorCritic(action_dim=2, discrete=False, hidden_sizes=(8, 8))
    params = net.init(jax.random.key(2), obs)["params"]
    assert set(params) == {"actor", "critic"}
    assert params["actor"]["head"]["log_std"].shape == (2,)
    np.testing.assert_array_equal(params["actor"]["head"]["log_std"], 0.0)
    dist, _ = net.apply({"params": params}, obs)
    np.testing.assert_array_equal(dist.log_std, 0.0)
    shared = ActorCritic(action_dim=2, discrete=False, hidden_sizes=(8, 8), shared=True)
    assert set(jax.eval_shape(shared.init, jax.random.key(2), obs)["params"]) == {"torso", "policy_head", "value_head"}


def test_standalone_actor_and_critic_share_the_layout(obs):
    """params["actor"] / params["critic"] of ActorCritic drive Actor / Critic with the same settings."""
    kwargs = dict(hidden_sizes=(8, 8), activation="relu")
    net = ActorCritic(action_dim=2, discrete=True, **kwargs)
    params = net.init(jax.random.key(3), obs)["params"]
    dist, value = net.apply({"params": params}, obs)
    actor_dist = Actor(action_dim=2, discrete=True, **kwargs).apply({"params": params["actor"]}, obs)
    critic_value = Critic(**kwargs).apply({"params": params["critic"]}, obs)
    np.testing.assert_allclose(actor_dist.logits, dist.logits, rtol=1e-6)
    np.testing.assert_allclose(critic_value, value, rtol=1e-6)


def _gram(w):
    """W^T W when W has orthonormal columns, W W^T when rows: gain^2 I for an orthogonal initialisation."""
    w = np.asarray(w)
    return w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T


def test_orthogonal_initialisation_gains(obs):
    net = ActorCritic(action_dim=2, discrete=True, hidden_sizes=(8, 8))
    params = net.init(jax.random.key(4), obs)["params"]
    actor, critic = params["actor"], params["critic"]

    np.testing.assert_allclose(_gram(actor["torso"]["Dense_0"]["kernel"]), 2.0 * np.eye(OBS_DIM), atol=1e-5)
    np.testing.assert_allclose(_gram(actor["torso"]["Dense_1"]["kernel"]), 2.0 * np.eye(8), atol=1e-5)
    np.testing.assert_allclose(_gram(actor["head"]["Dense_0"]["kernel"]), 1e-4 * np.eye(2), atol=1e-9)
    np.testing.assert_allclose(_gram(critic["mlp"]["Dense_2"]["kernel"]), np.eye(1), atol=1e-5)
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if "bias" in jax.tree_util.keystr(leaf_path):
            np.testing.assert_array_equal(leaf, 0.0)
    # The initial policy is nearly uniform.
    dist, _ = net.apply({"params": params}, obs)
    np.testing.assert_allclose(dist.probs, 0.5, atol=0.02)


def test_orthogonal_initialisation_gains_of_the_shared_torso(obs):
    """ActorCritic(shared=True) initialises like the separate towers: torso kernels orthogonal with gain sqrt(2)
    (Gram matrix 2 I), the policy head's with gain 0.01 (1e-4 I), the value head's with gain 1 (its one column a
    unit vector; initialised at the policy's gain 0.01 it passed every other test), biases 0."""
    net = ActorCritic(action_dim=2, discrete=True, hidden_sizes=(8, 8), shared=True)
    params = net.init(jax.random.key(4), obs)["params"]
    assert set(params) == {"torso", "policy_head", "value_head"}

    np.testing.assert_allclose(_gram(params["torso"]["Dense_0"]["kernel"]), 2.0 * np.eye(OBS_DIM), atol=1e-5)
    np.testing.assert_allclose(_gram(params["torso"]["Dense_1"]["kernel"]), 2.0 * np.eye(8), atol=1e-5)
    np.testing.assert_allclose(_gram(params["policy_head"]["Dense_0"]["kernel"]), 1e-4 * np.eye(2), atol=1e-9)
    np.testing.assert_allclose(_gram(params["value_head"]["kernel"]), np.eye(1), atol=1e-5)
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if "bias" in jax.tree_util.keystr(leaf_path):
            np.testing.assert_array_equal(leaf, 0.0)


def test_mlp_activation_choice_and_validation(obs):
    tanh = MLP((8,), "tanh", output_dim=1)
    params = tanh.init(jax.random.key(5), obs)
    relu_out = MLP((8,), "relu", output_dim=1).apply(params, obs)
    assert not np.allclose(relu_out, tanh.apply(params, obs))
    hidden = MLP((8,), "relu").apply({"params": {"Dense_0": params["params"]["Dense_0"]}}, obs)
    assert hidden.shape == (5, 3, 8) and np.all(np.asarray(hidden) >= 0)
    with pytest.raises(ValueError, match="activation"):
        ActorCritic(action_dim=2, discrete=True, activation="gelu").init(jax.random.key(0), obs)
    # Widths and action counts: a zero-width layer initialised and output its bias alone, a zero-action head NaN.
    for module, message in [(ActorCritic(action_dim=0, discrete=True), r"PolicyHead.action_dim .* got 0"),
                            (ActorCritic(action_dim=2, discrete=False, hidden_sizes=(64, 0)), r"hidden_sizes\[1\]"),
                            (ActorCritic(action_dim=2, discrete=True, shared=True, hidden_sizes=(True,)),
                             r"hidden_sizes\[0\] must be a positive int; got True"),
                            (MLP((8,), output_dim=-1), "output_dim"),
                            (nets.PolicyHead(action_dim=2, discrete=False, log_std_init=float("nan")),  # NaN policy
                             "log_std_init must be a finite number")]:
        with pytest.raises(ValueError, match=message):
            module.init(jax.random.key(0), obs)


def test_vmapped_apply_equals_one_seed_at_a_time(obs):
    """Applying a stack of per-seed parameters under jit(vmap) equals applying each seed alone."""
    net = ActorCritic(action_dim=2, discrete=False, hidden_sizes=(8, 8))
    per_seed = [net.init(key, obs[0]) for key in jax.random.split(jax.random.key(6), 3)]
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_seed)
    dists, values = jax.jit(jax.vmap(net.apply, in_axes=(0, None)))(params, obs)
    assert values.shape == (3, 5, 3)
    for i in range(3):
        dist_i, value_i = net.apply(per_seed[i], obs)
        np.testing.assert_allclose(values[i], value_i, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dists.mean[i], dist_i.mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(values[0], values[1])


def test_log_std_is_learnable(obs):
    net = Actor(action_dim=2, discrete=False, hidden_sizes=(8, 8))
    params = net.init(jax.random.key(7), obs)
    actions = jnp.ones((5, 3, 2))
    grads = jax.jit(jax.grad(lambda p: jnp.mean(net.apply(p, obs).log_prob(actions))))(params)
    assert np.all(np.asarray(grads["params"]["head"]["log_std"]) != 0.0)


def _dot_shapes(fn, *args):
    """(lhs shape, rhs shape) of every dot_general in `fn`'s jaxpr."""
    eqns = jax.make_jaxpr(fn)(*args).jaxpr.eqns
    return [(e.invars[0].aval.shape, e.invars[1].aval.shape) for e in eqns if e.primitive.name == "dot_general"]


@pytest.mark.parametrize("features", [1, 2, 3, 4])
def test_dense_is_nn_dense_computed_column_by_column_where_that_is_faster(features):
    """`nets.Dense` has nn.Dense's parameters; its outputs and gradients equal nn.Dense's (float64), and on a
    CPU widths 2-3 are computed as one matrix-vector product per column."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (6, 5, 7), jnp.float64)
        ours, reference = nets.Dense(features), nn.Dense(features)
        params = reference.init(jax.random.key(1), x)
        params = jax.tree.map(lambda p: p.astype(jnp.float64) + 0.1, params)  # non-zero bias too
        assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(params)

        def loss(module):
            return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

        np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), rtol=1e-12, atol=1e-12)
        for got, want in zip(jax.grad(loss(ours), argnums=(0, 1))(params, x),
                             jax.grad(loss(reference), argnums=(0, 1))(params, x)):
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)

    columns = nets.dense_as_columns(features, "cpu")
    assert columns == (features in (2, 3))
    assert not nets.dense_as_columns(features, "gpu")
    dots = _dot_shapes(lambda p, x: ours.apply(p, x), jax.tree.map(lambda p: p.astype(jnp.float32), params),
                       x.astype(jnp.float32))
    if jax.default_backend() == "cpu":
        assert dots == ([((6, 5, 7), (7,))] * features if columns else [((6, 5, 7), (7, features))])


@pytest.mark.parametrize("discrete, shared", [(True, False), (False, True)])
def test_bfloat16_hidden_layers_keep_float32_parameters_heads_and_gradients(obs, discrete, shared):
    """dtype=bfloat16: hidden activations are bfloat16, parameters (same init), logits/means and values
    float32; outputs and gradients follow the float32 network to bfloat16 precision, but are not float32's."""
    f32 = ActorCritic(action_dim=2, discrete=discrete, hidden_sizes=(64, 64), shared=shared)
    bf16 = f32.clone(dtype=jnp.bfloat16)
    x = 3.0 * obs
    params = f32.init(jax.random.key(4), x)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(bf16.init(jax.random.key(4), x))):
        assert b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    (dist32, v32), (dist16, v16) = f32.apply(params, x), bf16.apply(params, x)
    out32, out16 = jax.tree.leaves(dist32)[0], jax.tree.leaves(dist16)[0]
    assert out16.dtype == v16.dtype == jnp.float32
    _, state = bf16.apply(params, x, capture_intermediates=True, mutable=["intermediates"])
    hidden_dtypes = {
        leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if "Dense_0" in jax.tree_util.keystr(path) and "head" not in jax.tree_util.keystr(path)
    }
    assert hidden_dtypes == {jnp.dtype(jnp.bfloat16)}
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3 per operation).
    scale = lambda a: float(np.abs(a).max())  # noqa: E731
    for a, b in ((out32, out16), (v32, v16)):
        err = float(np.abs(np.asarray(a) - np.asarray(b)).max())
        assert 1e-6 * scale(a) < err < 3e-2 * scale(a)

    def loss(net, p):
        dist, value = net.apply(p, x)
        return jnp.mean(jax.tree.leaves(dist)[0] ** 2) * 100.0 + jnp.mean((value - 1.0) ** 2)

    g32, g16 = jax.grad(loss, 1)(f32, params), jax.grad(loss, 1)(bf16, params)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g16))
    flat32 = np.concatenate([np.ravel(a) for a in jax.tree.leaves(g32)])
    flat16 = np.concatenate([np.ravel(a) for a in jax.tree.leaves(g16)])
    cosine = flat32 @ flat16 / np.linalg.norm(flat32) / np.linalg.norm(flat16)
    assert 0.999 < cosine < 1.0 - 1e-9
