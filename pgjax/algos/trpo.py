"""Trust Region Policy Optimisation (Schulman et al., 2015).

Per update, with GAE(lambda) advantages A from the rollout:

    maximise_theta  L(theta) = E[ pi_theta(a|s) / pi_old(a|s) A ] + c_H E[ H(pi_theta(.|s)) ]
    s.t.            KL(pi_old || pi_theta) <= delta

by one natural-gradient step s = sqrt(2 delta / x^T F x) x, x = F^{-1} grad L (conjugate gradient
on Fisher-vector products from jvp-of-grad of the KL; F is never formed), then a backtracking line
search that accepts the first fraction of s with KL <= delta and a real surrogate improvement. The entropy
bonus c_H (`ent_coef`, default 0: the lecture's TRPO) keeps a Gaussian policy's spread from collapsing
before it has learned (as OpenAI Baselines' `entcoeff`).
The value function is fitted separately by Adam on minibatches of the same rollout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from pgjax import advantages as adv
from pgjax import losses, optim, trust_region
from pgjax.algos import common
from pgjax.nets import Actor, ActorCritic, Critic
from pgjax.validation import check_int, check_non_negative, check_positive


@dataclasses.dataclass(frozen=True)
class TRPOConfig(common.OnPolicyConfig):
    """TRPO settings.

    Attributes (beyond `OnPolicyConfig`; learning_rate, anneal_lr and max_grad_norm apply to the value function):
      max_kl: the trust-region radius delta.
      ent_coef: entropy bonus c_H added to the surrogate (0 = plain TRPO).
      cg_iterations: conjugate-gradient iterations.
      cg_damping: damping lambda in (F + lambda I).
      num_backtracks: line-search step sizes tried (1, 1/2, 1/4, ...).
      vf_epochs, vf_minibatches: value-function fitting passes and minibatches per pass.
      normalize_advantages: standardise advantages over the batch.
      fisher_subsample: the Fisher-vector product uses the states of every k-th rollout step, all environments'
        (1 = every state; at most num_steps).
    """

    num_envs: int = 8
    num_steps: int = 256
    total_timesteps: int = 1_000_000
    learning_rate: float = 1e-3
    max_kl: float = 0.01
    ent_coef: float = 0.0
    cg_iterations: int = 10
    cg_damping: float = 0.1
    num_backtracks: int = 10
    vf_epochs: int = 5
    vf_minibatches: int = 8
    normalize_advantages: bool = True
    fisher_subsample: int = 1

    HYPERPARAMS = common.OnPolicyConfig.HYPERPARAMS + ("max_kl", "cg_damping", "ent_coef")

    def validate(self) -> None:
        """`OnPolicyConfig.validate` plus this algorithm's fields (`ValueError` naming the field)."""
        super().validate()
        common.check_normalizable("TRPOConfig", self.normalize_advantages, self.batch_size,
                                  "the batch (num_envs * num_steps)")
        check_positive("TRPOConfig.max_kl", self.max_kl)
        check_non_negative("TRPOConfig.cg_damping", self.cg_damping)
        check_non_negative("TRPOConfig.ent_coef", self.ent_coef)
        for field in ("cg_iterations", "num_backtracks", "vf_epochs"):
            check_int(f"TRPOConfig.{field}", getattr(self, field))
        common.check_divides("TRPOConfig", "num_envs * num_steps", self.batch_size, "vf_minibatches",
                             self.vf_minibatches)
        check_int("TRPOConfig.fisher_subsample", self.fisher_subsample)
        if self.fisher_subsample > self.num_steps:
            raise ValueError(f"TRPOConfig.fisher_subsample ({self.fisher_subsample}) must be at most num_steps "
                             f"({self.num_steps}): it keeps every k-th rollout step.")


@struct.dataclass
class TRPOState:
    """TRPO's agent: the actor-critic parameters and the value function's clipped Adam state (over the critic's
    raveled parameters); the actor is moved by the natural-gradient step, which keeps no optimiser state."""

    params: dict  # ActorCritic parameters: {"params": {"actor": ..., "critic": ...}}
    vf_opt_state: optax.OptState


def _split(params):
    return params["params"]["actor"], params["params"]["critic"]


def _join(actor, critic):
    return {"params": {"actor": actor, "critic": critic}}


def make_algorithm(config: TRPOConfig, network: ActorCritic) -> common.Algorithm:
    """TRPO as (init, act, value, update) for `common.make_on_policy_train`."""
    # The ActorCritic's towers, applied alone to their halves of the parameters.
    actor = Actor(network.action_dim, network.discrete, network.hidden_sizes, network.activation, dtype=network.dtype)
    critic = Critic(network.hidden_sizes, network.activation, dtype=network.dtype)

    def vf_optimizer(hp):
        return common.optimizer(config, hp, config.vf_epochs * config.vf_minibatches)

    def init(key, spec, hp):
        params = common.init_params(network, spec, key)
        return TRPOState(params, vf_optimizer(hp).init(optim.ravel_params(_split(params)[1])[0]))

    def policy_step(actor_params, obs, action, old_log_prob, advantage, fisher_obs, hp):
        def dist_fn(p):
            return actor.apply({"params": p}, obs)

        def surrogate(p):
            dist = dist_fn(p)
            ratio = jnp.exp(dist.log_prob(action) - old_log_prob)
            return jnp.mean(ratio * advantage) + hp["ent_coef"] * jnp.mean(dist.entropy())

        kl_fisher = trust_region.policy_kl_fn(lambda p: actor.apply({"params": p}, fisher_obs), actor_params)
        kl_full = trust_region.policy_kl_fn(dist_fn, actor_params)
        grad = jax.grad(surrogate)(actor_params)

        def fvp(v):
            return trust_region.fisher_vector_product(kl_fisher, actor_params, v, hp["cg_damping"])

        step, expected = trust_region.natural_gradient_step(grad, fvp, hp["max_kl"], config.cg_iterations)
        new_params, accepted, fraction = trust_region.backtracking_line_search(
            lambda p: (surrogate(p), kl_full(p)), actor_params, step, expected, hp["max_kl"], config.num_backtracks
        )
        metrics = {
            "surrogate_improvement": surrogate(new_params) - surrogate(actor_params),
            "expected_improvement": expected,
            "kl": kl_full(new_params),
            "step_accepted": accepted.astype(jnp.float32),
            "step_fraction": fraction,
        }
        return new_params, metrics

    def value_loss(params, minibatch):
        mb_obs, mb_target = minibatch
        loss = losses.value_loss(critic.apply({"params": params}, mb_obs), mb_target)
        return loss, {"value_loss": loss}

    def fit_value(critic_params, opt_state, obs, target, key, hp):
        return common.minibatch_descent(
            key, vf_optimizer(hp), value_loss, critic_params, opt_state, (obs, target), config.vf_epochs,
            config.vf_minibatches, config.scan_unroll, norm_name="value_grad_norm",
        )

    def update(agent, batch, key, hp, update_idx):
        advantage, target = adv.gae(
            batch.reward, batch.value, batch.next_value, batch.terminated, batch.truncated, hp["discount"],
            hp["gae_lambda"], config.scan_unroll,
        )
        obs, action, old_log_prob, advantage, target = common.flatten_batch(
            (batch.obs, batch.action, batch.log_prob, advantage, target)
        )
        if config.normalize_advantages:
            advantage = adv.normalize(advantage)
        actor_params, critic_params = _split(agent.params)
        old_dist = actor.apply({"params": actor_params}, obs)
        # Every k-th step of the rollout, all environments' states (every k-th row of the time-major flat batch
        # would take only some environments' states: with k = num_envs, environment 0's alone).
        fisher_obs = common.flatten_batch(batch.obs[:: config.fisher_subsample])
        actor_params, metrics = policy_step(actor_params, obs, action, old_log_prob, advantage, fisher_obs, hp)
        critic_params, vf_opt_state, vf_metrics = fit_value(critic_params, agent.vf_opt_state, obs, target, key, hp)
        metrics.update(vf_metrics)
        metrics["entropy"] = jnp.mean(old_dist.entropy())
        metrics["explained_variance"] = losses.explained_variance(common.flatten_batch(batch.value), target)
        return TRPOState(_join(actor_params, critic_params), vf_opt_state), metrics

    return common.Algorithm(init, common.sampling_act(network), common.critic_value(network), update)


def make_train(config: TRPOConfig, progress: common.ProgressFn | None = None):
    """`train(key, hparams=None) -> TrainOutput` for TRPO (see `common.make_on_policy_train`)."""
    return common.make_train_from(config, make_algorithm, progress)
