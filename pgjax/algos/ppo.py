"""Proximal Policy Optimisation (Schulman et al., 2017).

Per update: a rollout of num_steps x num_envs transitions, GAE(lambda) advantages (bootstrapping
time-limit truncations from V(final observation)), then num_epochs passes of minibatch Adam
steps on

    L = -E[min(rho A, clip(rho, 1-eps, 1+eps) A)] + c_v L_V - c_H E[H(pi(.|s))],
    rho = pi_theta(a|s) / pi_old(a|s).

With target_kl > 0 an update stops early: its remaining minibatch steps are skipped from the first
minibatch on which mean((rho - 1) - log rho) > target_kl (`common.kl_early_stopping`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import optax

from pgjax import advantages as adv
from pgjax import losses, optim, parallel
from pgjax.algos import common
from pgjax.nets import ActorCritic
from pgjax.validation import check_int, check_non_negative, check_positive


@dataclasses.dataclass(frozen=True)
class PPOConfig(common.OnPolicyConfig):
    """PPO settings; defaults reach 500 on CartPole-v1 in 5e5 steps.

    Attributes (beyond `OnPolicyConfig`):
      num_epochs: passes over each rollout.
      num_minibatches: minibatches per pass; must divide num_envs * num_steps.
      clip_eps: ratio clip epsilon (also the value clip, when clip_value).
      clip_value: clip the value loss around the rollout's values (PPO2).
      ent_coef: entropy bonus coefficient c_H.
      vf_coef: value loss coefficient c_v.
      normalize_advantages: standardise advantages within each minibatch.
      target_kl: early stopping: the update's remaining minibatch steps are skipped from the first one whose
        approx_kl (KL(pi_old || pi_theta) estimated on its minibatch before the step) exceeds target_kl;
        0 (default) never stops. Vmappable, so a grid can hold 0. `steps_taken` reports the fraction of
        steps applied; the update's other metrics are means over the minibatches seen (those steps and the one
        that stopped). Skipped steps leave Adam's state as it is (its bias correction counts the steps taken),
        while the annealed learning rate follows the update index, as in Stable-Baselines3 and CleanRL. With
        split_actor_critic only the actor stops; the critic, whose Adam is its own, fits every minibatch.
      split_actor_critic: give the actor and the critic each its own clipped Adam: their gradients are
        clipped to max_grad_norm by their own norms (rejax's PPO also optimises them separately), not by
        one joint norm. Every minibatch step then updates the two independently, so under
        `pgjax.parallel.actor_critic_sharded` one device takes each (one seed on two CPU cores).
    """

    num_epochs: int = 4
    num_minibatches: int = 4
    clip_eps: float = 0.2
    clip_value: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    normalize_advantages: bool = True
    split_actor_critic: bool = False
    target_kl: float = 0.0

    HYPERPARAMS = common.OnPolicyConfig.HYPERPARAMS + ("clip_eps", "ent_coef", "vf_coef", "target_kl")

    def validate(self) -> None:
        """`OnPolicyConfig.validate` plus this algorithm's fields (`ValueError` naming the field)."""
        super().validate()
        check_int("PPOConfig.num_epochs", self.num_epochs)
        common.check_divides("PPOConfig", "num_envs * num_steps", self.batch_size, "num_minibatches",
                             self.num_minibatches)
        common.check_normalizable("PPOConfig", self.normalize_advantages, self.batch_size // self.num_minibatches,
                                  "minibatches (num_envs * num_steps / num_minibatches)")
        check_positive("PPOConfig.clip_eps", self.clip_eps)
        check_non_negative("PPOConfig.ent_coef", self.ent_coef)
        check_non_negative("PPOConfig.vf_coef", self.vf_coef)
        check_non_negative("PPOConfig.target_kl", self.target_kl)


def _optimizer(config: PPOConfig, hp: common.HParams, schedule_offset: int | jnp.ndarray = 0
               ) -> optax.GradientTransformation:
    return common.optimizer(config, hp, config.num_epochs * config.num_minibatches, schedule_offset)


def _update_optimizer(config: PPOConfig, hp: common.HParams, update_idx, adam: optim.ClippedAdamState
                      ) -> optax.GradientTransformation:
    """The optimiser of update `update_idx` for an Adam that has taken `adam.count` steps: the steps early stopping
    skipped in earlier updates are its schedule offset, so the annealed rate follows the update index."""
    return _optimizer(config, hp, update_idx * config.num_epochs * config.num_minibatches - adam.count)


def ppo_policy_loss(params, network, minibatch, hp, config: PPOConfig):
    """The actor's part of the PPO loss on a minibatch (fields [B, ...]), -L_clip - c_H H; returns (loss, metrics).

    Reads only the actor's parameters (`params["params"]["actor"]` for separate towers).
    """
    obs, action, old_log_prob, _, advantage, _ = minibatch
    dist = network.apply(params, obs, method="policy")
    if config.normalize_advantages:
        advantage = adv.normalize(advantage)
    pg_loss, clip_fraction, approx_kl = losses.clipped_surrogate_loss(
        dist.log_prob(action), old_log_prob, advantage, hp["clip_eps"]
    )
    entropy = jnp.mean(dist.entropy())
    metrics = {"policy_loss": pg_loss, "entropy": entropy, "approx_kl": approx_kl, "clip_fraction": clip_fraction}
    return pg_loss - hp["ent_coef"] * entropy, metrics


def ppo_value_loss(params, network, minibatch, hp, config: PPOConfig):
    """The critic's part of the PPO loss on a minibatch (fields [B, ...]), c_v L_V with
    L_V = 1/2 mean_i (V(s_i) - y_i)^2 (clipped around the rollout's values when config.clip_value, `losses.value_loss`);
    returns (loss, metrics)."""
    obs, _, _, old_value, _, target = minibatch
    value = network.apply(params, obs, method="value")
    if config.clip_value:
        v_loss = losses.value_loss(value, target, old_value, hp["clip_eps"])
    else:
        v_loss = losses.value_loss(value, target)
    return hp["vf_coef"] * v_loss, {"value_loss": v_loss}


def ppo_loss(params, network, minibatch, hp, config: PPOConfig):
    """The PPO loss on a minibatch (fields [B, ...]), the policy part plus the value part; returns (loss, metrics)."""
    policy_part, policy_metrics = ppo_policy_loss(params, network, minibatch, hp, config)
    value_part, value_metrics = ppo_value_loss(params, network, minibatch, hp, config)
    loss = policy_part + value_part
    return loss, {"loss": loss, **policy_metrics, **value_metrics}


class SplitAdamState(NamedTuple):
    """split_actor_critic's optimiser state: each network's own clipped Adam over its raveled parameters."""

    actor: optim.ClippedAdamState
    critic: optim.ClippedAdamState


def _split_adam_init(config: PPOConfig, hp: common.HParams, params) -> SplitAdamState:
    tx = _optimizer(config, hp)
    return SplitAdamState(*(tx.init(optim.ravel_params(params["params"][name])[0]) for name in ("actor", "critic")))


def _split_descent(config: PPOConfig, network: ActorCritic, key, hp, params, opt_state: SplitAdamState, data,
                   update_idx):
    """The minibatch epochs of the actor and of the critic, each with its own clipped Adam.

    Both use the same shuffles (`key`). Early stopping (target_kl) stops the actor's steps only: the KL is
    the policy's, and the critic's Adam, unlike the joint optimiser's, does not have to stop with it.
    Under `parallel.ACTOR_CRITIC_AXIS` device 0 runs the actor's epochs and device 1 the critic's,
    and one `psum` of the packed results (each device's zeros for the other's) gives both devices
    everything; otherwise the two run one after the other.
    """
    towers = params["params"]
    steps = config.num_epochs * config.num_minibatches

    def epochs(part_loss, name, adam, target_kl=None):
        loss_fn = lambda tower, mb: part_loss({"params": {name: tower}}, network, mb, hp, config)  # noqa: E731
        tx = _update_optimizer(config, hp, update_idx, adam)
        tower, adam, metrics = common.minibatch_descent(  # each clipped by its own norm
            key, tx, loss_fn, towers[name], adam, data, config.num_epochs, config.num_minibatches, config.scan_unroll,
            f"{name}_grad_norm", target_kl,
        )
        return tower, adam.mu, adam.nu, metrics  # float32 only, for one_part_per_device (counts: below)

    def actor():
        return epochs(ppo_policy_loss, "actor", opt_state.actor, hp["target_kl"])

    def critic():
        return epochs(ppo_value_loss, "critic", opt_state.critic)

    if parallel.axis_index_or_none(parallel.ACTOR_CRITIC_AXIS) is None:
        actor_out, critic_out = actor(), critic()
    else:
        actor_out, critic_out = parallel.one_part_per_device((actor, critic), parallel.ACTOR_CRITIC_AXIS)
    (actor_tower, mu_actor, nu_actor, actor_metrics) = actor_out
    (critic_tower, mu_critic, nu_critic, critic_metrics) = critic_out
    # steps_taken is the mean of 0/1 flags over the update's steps, so this product is an exact count.
    actor_steps = jnp.round(actor_metrics["steps_taken"] * steps).astype(opt_state.actor.count.dtype)
    opt_state = SplitAdamState(
        optim.ClippedAdamState(opt_state.actor.count + actor_steps, mu_actor, nu_actor),
        optim.ClippedAdamState(opt_state.critic.count + steps, mu_critic, nu_critic),
    )
    metrics = {**actor_metrics, **critic_metrics}
    metrics["loss"] = (
        metrics["policy_loss"] - hp["ent_coef"] * metrics["entropy"] + hp["vf_coef"] * metrics["value_loss"]
    )
    return {**params, "params": {**towers, "actor": actor_tower, "critic": critic_tower}}, opt_state, metrics


def make_algorithm(config: PPOConfig, network: ActorCritic) -> common.Algorithm:
    """PPO as (init, act, value, update) for `common.make_on_policy_train`."""

    def init(key, spec, hp):
        if not config.split_actor_critic:
            return common.init_agent(network, spec, _optimizer(config, hp), key)
        params = common.init_params(network, spec, key)
        return common.AgentState(params, _split_adam_init(config, hp, params))  # one Adam per network

    def update(agent, batch, key, hp, update_idx):
        advantage, target = adv.gae(
            batch.reward, batch.value, batch.next_value, batch.terminated, batch.truncated, hp["discount"],
            hp["gae_lambda"], config.scan_unroll,
        )
        data = common.flatten_batch((batch.obs, batch.action, batch.log_prob, batch.value, advantage, target))
        if config.split_actor_critic:
            params, opt_state, metrics = _split_descent(config, network, key, hp, agent.params, agent.opt_state, data,
                                                        update_idx)
        else:
            tx = _update_optimizer(config, hp, update_idx, agent.opt_state)
            params, opt_state, metrics = common.minibatch_descent(
                key, tx, lambda params, mb: ppo_loss(params, network, mb, hp, config),
                agent.params, agent.opt_state, data, config.num_epochs, config.num_minibatches, config.scan_unroll,
                target_kl=hp["target_kl"],
            )
        metrics["explained_variance"] = losses.explained_variance(batch.value, target)
        return common.AgentState(params, opt_state), metrics

    return common.Algorithm(init, common.sampling_act(network), common.critic_value(network), update)


def make_train(config: PPOConfig, progress: common.ProgressFn | None = None):
    """`train(key, hparams=None) -> TrainOutput` for PPO (see `common.make_on_policy_train`)."""
    return common.make_train_from(config, make_algorithm, progress)
