"""Advantage actor-critic (A2C; Mnih et al., 2016, synchronous form).

One gradient step per rollout on

    L = -E[log pi(a|s) sg(A)] + c_v 1/2 E[(V(s) - y)^2] - c_H E[H(pi(.|s))]

with A and y from GAE(lambda) or n-step returns, both bootstrapping time-limit truncations
from V(final observation) and never past a termination.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pgjax import advantages as adv
from pgjax import losses
from pgjax.algos import common
from pgjax.nets import ActorCritic
from pgjax.validation import check_int, check_non_negative

ADVANTAGE_METHODS = ("gae", "nstep")


@dataclasses.dataclass(frozen=True)
class A2CConfig(common.OnPolicyConfig):
    """A2C settings.

    Attributes (beyond `OnPolicyConfig`):
      advantage_method: "gae" (GAE(gae_lambda)) or "nstep" (n-step returns with n = n_steps_return).
      n_steps_return: n for "nstep"; must be <= num_steps then (ignored by "gae").
      ent_coef, vf_coef: entropy bonus and value-loss coefficients.
      normalize_advantages: standardise advantages over the batch.
    """

    num_envs: int = 8
    num_steps: int = 32
    learning_rate: float = 1e-3
    total_timesteps: int = 1_000_000
    advantage_method: str = "gae"
    n_steps_return: int = 5
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    normalize_advantages: bool = True

    HYPERPARAMS = common.OnPolicyConfig.HYPERPARAMS + ("ent_coef", "vf_coef")

    def validate(self) -> None:
        """`OnPolicyConfig.validate` plus this algorithm's fields (`ValueError` naming the field)."""
        super().validate()
        common.check_normalizable("A2CConfig", self.normalize_advantages, self.batch_size,
                                  "the batch (num_envs * num_steps)")
        if self.advantage_method not in ADVANTAGE_METHODS:
            raise ValueError(f"A2CConfig.advantage_method must be one of {ADVANTAGE_METHODS}; "
                             f"got {self.advantage_method!r}.")
        check_int("A2CConfig.n_steps_return", self.n_steps_return)
        if self.advantage_method == "nstep" and self.n_steps_return > self.num_steps:
            raise ValueError(
                f"A2CConfig.n_steps_return ({self.n_steps_return}) must be <= num_steps ({self.num_steps})."
            )
        check_non_negative("A2CConfig.ent_coef", self.ent_coef)
        check_non_negative("A2CConfig.vf_coef", self.vf_coef)


def estimate_advantages(config, batch, hp):
    """(advantages [T, N], value targets [T, N]) by GAE or n-step returns."""
    args = (batch.reward, batch.value, batch.next_value, batch.terminated, batch.truncated, hp["discount"])
    if config.advantage_method == "gae":
        return adv.gae(*args, hp["gae_lambda"], unroll=config.scan_unroll)
    return adv.n_step_advantages(*args, config.n_steps_return)


def make_algorithm(config: A2CConfig, network: ActorCritic) -> common.Algorithm:
    """A2C as (init, act, value, update) for `common.make_on_policy_train`."""

    def init(key, spec, hp):
        return common.init_agent(network, spec, common.optimizer(config, hp), key)

    def loss_fn(params, batch, advantage, target, hp):
        dist, value = network.apply(params, batch.obs)
        if config.normalize_advantages:
            advantage = adv.normalize(advantage)
        pg_loss = losses.policy_gradient_loss(dist.log_prob(batch.action), advantage)
        v_loss = losses.value_loss(value, target)
        entropy = jnp.mean(dist.entropy())
        loss = pg_loss + hp["vf_coef"] * v_loss - hp["ent_coef"] * entropy
        return loss, {"loss": loss, "policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy}

    def update(agent, batch, key, hp, update_idx):
        del key
        advantage, target = estimate_advantages(config, batch, hp)
        tx = common.optimizer(config, hp)
        new_agent, metrics = common.one_step_update(tx, loss_fn, agent, batch, advantage, target, hp)
        metrics["kl"] = common.policy_shift_kl(network, agent.params, new_agent.params, batch.obs)
        metrics["explained_variance"] = losses.explained_variance(batch.value, target)
        return new_agent, metrics

    return common.Algorithm(init, common.sampling_act(network), common.critic_value(network), update)


def make_train(config: A2CConfig, progress: common.ProgressFn | None = None):
    """`train(key, hparams=None) -> TrainOutput` for A2C (see `common.make_on_policy_train`)."""
    return common.make_train_from(config, make_algorithm, progress)
