"""REINFORCE (Williams, 1992) with rewards-to-go and an optional learned state-value baseline.

    g = (1/|V|) sum_{(t,i) in V} grad log pi(a_t|s_t) (G_t - b(s_t)),   G_t = sum_{k>=t} gamma^{k-t} r_k

Like every deep-RL implementation (and pgjax's A2C, TRPO and PPO), the update drops the lecture's weight gamma^t
on step t (grad J = E[sum_t gamma^t grad log pi(a_t|s_t) (G_t - b)]) and averages over steps, and by default it
standardises G_t - b: g is a biased ascent direction, not an unbiased estimate of grad J (Nota and Thomas, 2020;
its cosine with the exact gradient is measured in notebook 03). `pgjax.estimators` and
`offline.on_policy_gradient_loss` keep gamma^t.

Returns are Monte Carlo: G_t is summed to the end of the episode, so only steps whose episode
ends inside the rollout (the valid set V) enter the loss; the steps after the last episode end of
each environment are masked out, and the environment carries on into the next rollout, where
the rest of that episode is used. Make num_steps at least the episode time limit. At a time-limit
truncation the return is bootstrapped with b(final observation) when a baseline is learned (and
cut there without one, the time-limited return); a termination is never bootstrapped. A rollout in which no
episode ends has nothing to learn from: the update keeps the agent and reports NaN losses.

The theorem's estimator (`episodic=True, discount_weighting=True, normalize_advantages=False`): every update
resets all N environments and learns from each one's first episode, N whole episodes from the initial-state
distribution mu, with

    g = (1/N) sum_{i<N} sum_{t<T_i} gamma^t grad log pi(a_t^i|s_t^i) (G_t^i - b(s_t^i)),

an unbiased estimate of grad J(theta) = grad E_{s_0 ~ mu}[V^pi(s_0)] (the lecture's REINFORCE; b only lowers the
variance). Tested against the exact gradient of a tabular MDP (tests/test_algo_updates.py). The steps after an
environment's first episode are stepped and counted in env_steps but not learned from (`valid_fraction`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from pgjax import advantages as adv
from pgjax import losses
from pgjax.algos import common
from pgjax.nets import ActorCritic
from pgjax.validation import check_non_negative


@dataclasses.dataclass(frozen=True)
class REINFORCEConfig(common.OnPolicyConfig):
    """REINFORCE settings.

    Attributes (beyond `OnPolicyConfig`; gae_lambda is unused, and not among its HYPERPARAMS):
      use_baseline: learn V(s) and subtract it from G_t.
      vf_coef: baseline loss coefficient.
      ent_coef: entropy bonus coefficient.
      normalize_advantages: standardise G_t - b(s_t) over the valid steps.
      episodic: reset every environment at each update and learn from its first episode only: N whole episodes
        from the initial states, the policy-gradient loss summed over each episode and averaged over the N
        (num_steps must cover the step limit; observation and reward normalisers keep their statistics).
      discount_weighting: weight step t of an episode by gamma^t, as the policy gradient theorem does (needs
        episodic); with episodic and without normalize_advantages, the update's gradient is unbiased for grad J.
    """

    num_envs: int = 4
    num_steps: int = 500
    learning_rate: float = 3e-3
    total_timesteps: int = 1_000_000
    use_baseline: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    normalize_advantages: bool = True
    episodic: bool = False
    discount_weighting: bool = False

    # gae_lambda left out: a grid over it would train identical cells.
    HYPERPARAMS = tuple(h for h in common.OnPolicyConfig.HYPERPARAMS if h != "gae_lambda") + ("vf_coef", "ent_coef")

    def validate(self) -> None:
        """`OnPolicyConfig.validate` plus this algorithm's fields (`ValueError` naming the field)."""
        super().validate()
        check_non_negative("REINFORCEConfig.vf_coef", self.vf_coef)
        check_non_negative("REINFORCEConfig.ent_coef", self.ent_coef)
        if self.discount_weighting and not self.episodic:
            raise ValueError("REINFORCEConfig.discount_weighting weights step t by gamma^t counted from the episode's "
                             "start, which only episodic=True provides; set episodic=True or discount_weighting=False.")

    @property
    def restarts_episodes(self) -> bool:
        """`episodic`: the training loop resets every environment before each update's rollout."""
        return self.episodic


def completed_episode_mask(terminated, truncated):
    """valid[t, i] = 1 iff an episode of env i ends at some step k >= t of the rollout ([T, N] -> [T, N])."""
    done = jnp.logical_or(terminated, truncated)
    # reverse cumulative OR along time
    ends_later = lax.associative_scan(jnp.logical_or, done, reverse=True, axis=0)
    return ends_later.astype(jnp.float32)


def first_episode_mask(terminated, truncated):
    """valid[t, i] = 1 iff step t belongs to environment i's first episode of the rollout and that episode ends
    inside it ([T, N] -> [T, N]): the steps up to and including env i's first end, if it has one."""
    done = jnp.logical_or(terminated, truncated)
    ended_before = jnp.cumsum(done, axis=0) - done  # episode ends at steps < t
    return ((ended_before == 0) & jnp.any(done, axis=0)).astype(jnp.float32)


def masked_mean(x, mask):
    """sum(x m) / max(sum(m), 1) over all elements of x and mask m (same shape, e.g. [T, N]); a scalar."""
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def learning_targets(config: REINFORCEConfig, batch: common.Transition, hp: common.HParams):
    """(returns G [T, N], valid-step mask [T, N], step weights [T, N]) of a rollout (fields [T, N]).

    G_t is the discounted return to the episode's end (bootstrapped with b(final observation) at a truncation
    when a baseline is learned); the mask is `completed_episode_mask`, or `first_episode_mask` when
    `config.episodic`; the weights are gamma^t on the mask with `discount_weighting` (t from the rollout's
    start, which is the episode's: episodic resets), else the mask.
    """
    if config.episodic:
        mask = first_episode_mask(batch.terminated, batch.truncated)
    else:
        mask = completed_episode_mask(batch.terminated, batch.truncated)
    next_values = batch.next_value if config.use_baseline else jnp.zeros_like(batch.reward)
    returns = adv.discounted_returns(batch.reward, next_values, batch.terminated, batch.truncated, hp["discount"],
                                     config.scan_unroll)
    weight = mask
    if config.discount_weighting:
        weight = mask * hp["discount"] ** jnp.arange(mask.shape[0], dtype=jnp.float32)[:, None]
    return returns, mask, weight


def make_loss(config: REINFORCEConfig, network: ActorCritic):
    """`loss_fn(params, batch, returns, mask, weight, hp) -> (loss, metrics)` (a scalar and a dict of scalars;
    fields [T, N], the arrays of `learning_targets`):

        L = L_pg + vf_coef * 0.5 mean_V (V(s_t) - G_t)^2 - ent_coef * mean_V H(pi(.|s_t)),
        L_pg = -mean_V log pi(a_t|s_t) A_t                      (episodic=False),
        L_pg = -(1/N) sum_{t,i} w_t^i log pi(a_t^i|s_t^i) A_t^i   (episodic=True: per episode, averaged over the N),

    A_t = G_t - b(s_t) (b = V with use_baseline, else 0; standardised over the valid steps V with
    normalize_advantages), w the step weights (gamma^t with discount_weighting). -grad L_pg is the update's
    policy gradient estimate.
    """

    def loss_fn(params, batch, returns, mask, weight, hp):
        dist, value = network.apply(params, batch.obs)
        baseline = lax.stop_gradient(value) if config.use_baseline else jnp.zeros_like(value)
        advantage = returns - baseline
        if config.normalize_advantages:
            mean = masked_mean(advantage, mask)
            std = jnp.sqrt(masked_mean((advantage - mean) ** 2, mask))
            advantage = (advantage - mean) / (std + 1e-8)
        log_prob = dist.log_prob(batch.action)
        if config.episodic:
            pg_loss = -jnp.sum(log_prob * lax.stop_gradient(advantage) * weight) / mask.shape[1]
        else:
            pg_loss = -masked_mean(log_prob * lax.stop_gradient(advantage), mask)
        v_loss = 0.5 * masked_mean((value - returns) ** 2, mask) if config.use_baseline else jnp.zeros(())
        entropy = masked_mean(dist.entropy(), mask)
        loss = pg_loss + hp["vf_coef"] * v_loss - hp["ent_coef"] * entropy
        return loss, {"loss": loss, "policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy}

    return loss_fn


def make_algorithm(config: REINFORCEConfig, network: ActorCritic) -> common.Algorithm:
    """REINFORCE as (init, act, value, update) for `common.make_on_policy_train`."""
    loss_fn = make_loss(config, network)

    def init(key, spec, hp):
        return common.init_agent(network, spec, common.optimizer(config, hp), key)

    def update(agent, batch, key, hp, update_idx):
        del key
        returns, mask, weight = learning_targets(config, batch, hp)
        # Updates skipped below keep Adam's count behind the update index: the annealed rate follows the index.
        tx = common.optimizer(config, hp, schedule_offset=update_idx - agent.opt_state.count)
        new_agent, metrics = common.one_step_update(tx, loss_fn, agent, batch, returns, mask, weight, hp)
        # A rollout in which no episode ended (num_steps below the step limit) has nothing to learn from: the
        # gradient is 0, but Adam's momentum would still move the parameters. The agent is kept, and the loss
        # metrics, means over no steps, are NaN.
        learned = jnp.any(mask > 0)
        new_agent = jax.tree_util.tree_map(lambda new, old: jnp.where(learned, new, old), new_agent, agent)
        metrics = {name: jnp.where(learned, value, jnp.nan) for name, value in metrics.items()}
        metrics["kl"] = common.policy_shift_kl(network, agent.params, new_agent.params, batch.obs)
        metrics["valid_fraction"] = jnp.mean(mask)
        if config.use_baseline:
            metrics["explained_variance"] = losses.explained_variance(batch.value, returns, mask)
        return new_agent, metrics

    return common.Algorithm(init, common.sampling_act(network), common.critic_value(network), update)


def make_train(config: REINFORCEConfig, progress: common.ProgressFn | None = None):
    """`train(key, hparams=None) -> TrainOutput` for REINFORCE (see `common.make_on_policy_train`)."""
    return common.make_train_from(config, make_algorithm, progress)
