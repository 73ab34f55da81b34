"""What every online algorithm shares: config validation, the environment stack, rollouts,
optimisers with vmappable hyperparameters, and the one-function training loop.

An algorithm is four pure functions (`Algorithm`):

    init(key, spec, hp)                               -> agent state (params, optimiser states)
    act(agent, obs [N, obs], noise [N, A])            -> (action [N, ...], log_prob [N])
    value(agent, obs [..., obs])                      -> V(obs) [...]
    update(agent, batch [T, N], key, hp, update_idx)  -> (agent, metrics dict of scalars)

and `make_on_policy_train(config, algorithm)` wires them into `train(key, hparams) ->
TrainOutput`, a single `lax.scan` over updates that `jax.jit` compiles once and `jax.vmap`
batches over seeds (keys) and over numeric hyperparameters (`hparams`, a dict of scalars).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax

from pgjax import distributions, envs, losses, optim, parallel
from pgjax.algos import evaluation
from pgjax.nets import ActorCritic
from pgjax.validation import check_int, check_positive, is_int, is_real

Array = jax.Array
HParams = dict[str, Array]

ACTIVATIONS = ("tanh", "relu")
# OnPolicyConfig.compute_dtype: the networks' hidden-layer dtype (pgjax.nets, mixed precision).
COMPUTE_DTYPES = ("float32", "bfloat16")
# OnPolicyConfig.unroll=0 on a GPU/TPU. On an H100, PPO per update: 1 seed 5.40 / 2.93 / 2.41 ms at unroll 1 / 8 / 16,
# 2048 seeds 32.8 / 28.5 / 28.0 ms; 16 doubles the compile time, which a 5e5-step run does not win back.
ACCELERATOR_UNROLL = 8
INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OnPolicyConfig:
    """Fields shared by every online algorithm. Validated at construction (`ValueError` naming the field).

    Numeric fields listed in `HYPERPARAMS` become the `hparams` dict of `train(key, hparams)`,
    so they can be vmapped; the others fix array shapes or code paths and are static.

    Attributes (`field_docs` reads these one-line summaries, e.g. for `train.py --help`; more below):
      env_id: a gymnax id or tabular:chain / tabular:gridworld / tabular:random (`pgjax.envs.env_ids()`).
      total_timesteps: env steps per seed; the run makes total_timesteps // (num_envs * num_steps) updates.
      num_envs: parallel environments per seed.
      num_steps: rollout length per environment per update.
      learning_rate: Adam's step size (its start, when annealed).
      anneal_lr: decay the step size linearly over the run.
      final_lr_fraction: where the anneal ends, as a fraction of learning_rate (0: at zero).
      max_grad_norm: global-norm gradient clip before Adam.
      adam_eps: Adam's epsilon, added to sqrt(v) in the step's denominator (1e-5 as CleanRL's PPO; optax 1e-8).
      discount: gamma in (0, 1].
      gae_lambda: GAE's lambda in [0, 1] (1: Monte Carlo returns minus values).
      reward_scale: multiplies the rewards learned from, never the reported returns.
      hidden_sizes: hidden layer widths of the actor and of the critic (separate towers).
      activation: hidden-layer nonlinearity, "tanh" or "relu".
      normalize_observations: running mean/std observation normalisation (statistics in the env state).
      normalize_rewards: divide the rewards learned from by the running std of the discounted return.
      env_kwargs: keyword arguments for the environment (e.g. a tabular MDP's num_states).
      env_randomize: domain randomisation: ((field, low, high), ...), each numeric params field drawn from
        U[low, high] at every episode's reset (e.g. (("length", 0.25, 2.0),) for CartPole's pole; empty: off),
        or log-uniformly for an entry (field, low, high, "log") (0 < low).
      env_randomize_observe: the policy and critic observe the episode's randomised fields, appended to the
        observation, each scaled to [-1, 1] over its range (`pgjax.envs.ObserveParams`; needs env_randomize).
      unroll: scan unroll factor inside each update (speed only; 0 picks per backend).
      compute_dtype: "float32" or "bfloat16" for the networks' hidden layers.
      eval_every: evaluate the policy every this many updates and after the last, inside the compiled run
        (metric eval_return; 0: never).
      eval_episodes: episodes per evaluation, one per fresh environment, actions by the policy's mode.
      eval_stochastic: sample the evaluations' actions from the policy instead of taking its mode.

    `unroll` is a speed knob that changes results only by float rounding: the `lax.scan` unroll
    factor of the loops inside each update (rollout steps, the advantage scan, minibatch steps).
    0 (default) picks per backend (`scan_unroll`): 1 on a CPU, where unrolling only slowed runs
    down, and 8 on a GPU or TPU, where each loop iteration costs launch and control-flow latency
    (on an H100, PPO runs 1.84x faster at 1 seed and 1.15x at 2048 seeds; benchmarks/README.md).

    `anneal_lr` (default True, as in rejax, PureJaxRL and CleanRL) decays the learning rate linearly
    over the run, to `final_lr_fraction * learning_rate` (default 0: to zero; a vmappable
    hyperparameter). It leaves a few seeds behind: PPO on CartPole-v1 at these defaults ended 1020 of
    1024 seeds at >= 475, with a 10% floor 1021, with `anneal_lr=False` 1024 of 1024; on Pendulum-v1,
    though, a constant rate did worse (worst of 8 seeds -607.6 against -174.4; benchmarks/README.md).
    Rewards scaled by 0.1 removed them with the anneal kept (1024 of 1024; the PPO CartPole preset).

    `reward_scale` (default 1; vmappable) multiplies the rewards the algorithm learns from (advantages,
    value targets), never the reported episode returns: r_t -> c r_t scales V and A by c. With raw
    (unnormalised) advantages it matters: the critic must fit targets of size |V| (Acrobot-v1 ~100) with
    Adam steps of about the learning rate per weight, and one global-norm clip bounds the policy's and the
    critic's gradients together. REINFORCE on Acrobot-v1 with raw advantages: 2 of 8 seeds learned at
    scale 1, 8 of 8 at 0.1; A2C on CartPole-v1: 245 of 256 seeds >= 475 at 1, 512 of 512 at 0.1; PPO on
    CartPole-v1 (normalised advantages): 1020 of 1024 at 1, 1024 of 1024 at 0.1. The presets
    (`pgjax/algos/presets.py`) use 0.1 for those and for A2C and REINFORCE on Pendulum-v1.

    `normalize_rewards` (default False) divides the rewards the algorithm learns from by the running standard
    deviation of the discounted return (`pgjax.envs.NormalizeReward`, statistics shared by a seed's environments,
    clipped to +-10), as gymnasium, Stable-Baselines3, CleanRL's continuous PPO and PureJaxRL do; `reward_scale`
    then multiplies the normalised rewards. Reported episode returns stay raw. Untuned (scale 1) against the
    presets' tuned 0.1 (8 seeds, median / worst): REINFORCE Acrobot-v1 -84.1 / -86.5 (tuned -83.8 / -87.1, neither
    -91.3 / -250.9), A2C Pendulum-v1 over 32 seeds -239.4 / -796.8 (tuned -236.2 / -706.1, neither
    -384.0 / -1050.7); with normalised advantages it changes only the critic's targets (benchmarks/README.md,
    twenty-second session).

    `compute_dtype` ("float32" default, or "bfloat16") is the dtype the networks' hidden layers compute
    and store activations in (mixed precision, `pgjax.nets`): parameters, optimiser state, heads,
    log-probabilities, values and losses stay float32. It halves the bytes of the activations whose
    memory traffic bounds wide seed sweeps on a GPU (the speed-up there is not yet measured); on a CPU
    it runs 2x slower (benchmarks/README.md, twentieth session).

    `env_randomize` (default empty: off) trains on a distribution of environments: at every reset each listed
    field of the environment's params is drawn from U[low, high], or log-uniformly for ("log")
    (`pgjax.envs.RandomizedParams`, drawn with the reset states, so rollouts keep `PredrawnResets`), and the episode
    runs under the drawn params; the policy does not see them, unless `env_randomize_observe`: then the
    observation ends with one feature per randomised field, (x - m) / h for the range's midpoint m and half-width
    h (of log x for a log-uniform range), so that the policy can adapt to the episode's draw (a
    context-conditioned policy) instead of having to do well on average over the range. In-run evaluations
    (`eval_every`) and `runs.evaluate` use the nominal environment (`env_id` with `env_kwargs`); evaluate variants
    with other `env_kwargs` (`evaluate.py --env-kwarg`). An observing policy is shown the evaluated variant's
    values, scaled by the training ranges (outside [-1, 1] beyond them).

    `eval_every` (default 0: off) evaluates the current policy inside the compiled run after every
    `eval_every`-th update and after the last: `eval_episodes` whole episodes on fresh environments, actions by
    the policy's mode (sampled with `eval_stochastic`), observation statistics frozen at their training values
    (`algos.evaluation`). The metric `eval_return` is their mean undiscounted return at those updates and NaN at
    the others. Evaluation draws its randomness from its own key stream, so turning it on leaves the training
    run unchanged.
    """

    env_id: str = "CartPole-v1"
    total_timesteps: int = 500_000
    num_envs: int = 4
    num_steps: int = 128
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    final_lr_fraction: float = 0.0
    max_grad_norm: float = 0.5
    adam_eps: float = 1e-5
    discount: float = 0.99
    gae_lambda: float = 0.95
    reward_scale: float = 1.0
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    normalize_observations: bool = False
    normalize_rewards: bool = False
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    env_randomize: tuple[tuple, ...] = ()
    env_randomize_observe: bool = False
    unroll: int = 0
    compute_dtype: str = "float32"
    eval_every: int = 0
    eval_episodes: int = 10
    eval_stochastic: bool = False

    HYPERPARAMS = ("learning_rate", "final_lr_fraction", "max_grad_norm", "adam_eps", "discount", "gae_lambda",
                   "reward_scale")

    def __post_init__(self):
        # Lists from JSON or the CLI become tuples, so configs stay hashable (static under jit).
        name = type(self).__name__
        sizes = self.hidden_sizes
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (tuple, list)) or not all(
                is_int(h) for h in sizes):
            raise ValueError(f"{name}.hidden_sizes must be a tuple of ints, e.g. (64, 64); got {sizes!r}.")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in sizes))
        if isinstance(self.env_kwargs, dict):
            object.__setattr__(self, "env_kwargs", tuple(sorted(self.env_kwargs.items())))
        if not isinstance(self.env_kwargs, tuple) or not all(
                isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) for e in self.env_kwargs):
            raise ValueError(f"{name}.env_kwargs must be a dict of environment keywords, e.g. "
                             f"{{'max_steps_in_episode': 200}}; got {self.env_kwargs!r}.")
        _check_field_types(self)
        object.__setattr__(self, "env_randomize", _randomize_entries(type(self).__name__, self.env_randomize))
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the field and the fix unless every field is valid (called at construction)."""
        name = type(self).__name__
        for field in ("total_timesteps", "num_envs", "num_steps", "eval_episodes"):
            check_int(f"{name}.{field}", getattr(self, field))
        check_int(f"{name}.eval_every", self.eval_every, minimum=0, note=" (updates between evaluations; 0: none)")
        if not is_int(self.unroll) or self.unroll < 0:
            raise ValueError(f"{name}.unroll must be an int >= 1, or 0 to pick per backend; got {self.unroll!r}.")
        if self.num_updates < 1:
            raise ValueError(
                f"{name}.total_timesteps ({self.total_timesteps}) must be at least num_envs * num_steps "
                f"({self.batch_size}) for one update; raise total_timesteps or lower num_envs/num_steps."
            )
        if self.num_updates * self.batch_size > INT32_MAX:  # the env_steps metric is an int32 inside the run
            raise ValueError(
                f"{name}.total_timesteps ({self.total_timesteps:,}) runs more than 2**31 - 1 env steps per seed, "
                "more than the run's int32 step count (the env_steps metric) holds; lower total_timesteps to at "
                "most 2,147,483,647 per seed."
            )
        for field in ("learning_rate", "max_grad_norm", "adam_eps", "reward_scale"):
            check_positive(f"{name}.{field}", getattr(self, field))
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(
                f"{name}.final_lr_fraction must lie in [0, 1] (the annealed learning rate's last value as a fraction "
                f"of learning_rate; it needs anneal_lr=True); got {self.final_lr_fraction}."
            )
        if self.final_lr_fraction and not self.anneal_lr:
            raise ValueError(f"{name}.final_lr_fraction ({self.final_lr_fraction}) only applies with anneal_lr=True; "
                             "set anneal_lr=True or final_lr_fraction=0.")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"{name}.discount must lie in (0, 1]; got {self.discount}.")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"{name}.gae_lambda must lie in [0, 1]; got {self.gae_lambda}.")
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"{name}.hidden_sizes must be a non-empty tuple of positive ints; "
                             f"got {self.hidden_sizes}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{name}.activation must be one of {ACTIVATIONS}; got {self.activation!r}.")
        if self.env_randomize_observe and not self.env_randomize:
            raise ValueError(f"{name}.env_randomize_observe observes the randomised fields, but env_randomize is "
                             "empty; randomise a field (e.g. env_randomize=(('length', 0.25, 2.0),)) or set it False.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"{name}.compute_dtype must be one of {COMPUTE_DTYPES}; got {self.compute_dtype!r}.")
        if not isinstance(self.env_id, str) or self.env_id not in envs.env_ids():
            raise ValueError(
                f"{name}.env_id {self.env_id!r} is not a known environment; try CartPole-v1, Acrobot-v1, "
                f"Pendulum-v1, MountainCarContinuous-v0 or tabular:chain (pgjax.envs.env_ids() lists them all)."
            )

    @property
    def batch_size(self) -> int:
        """Transitions per update: num_envs * num_steps."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """total_timesteps // batch_size (the remainder is not run)."""
        return self.total_timesteps // self.batch_size

    @property
    def restarts_episodes(self) -> bool:
        """Whether every update resets all environments before its rollout (REINFORCE's `episodic`)."""
        return False

    @property
    def network_dtype(self) -> Any:
        """The networks' hidden-layer dtype for `pgjax.nets` (None for float32: the parameters' own dtype)."""
        return None if self.compute_dtype == "float32" else jnp.dtype(self.compute_dtype)

    @property
    def scan_unroll(self) -> int:
        """The unroll factor in use: `unroll`, or for 0 the backend's default (1 on CPU, 8 elsewhere)."""
        if self.unroll:
            return self.unroll
        return 1 if jax.default_backend() == "cpu" else ACCELERATOR_UNROLL

    def hyperparams(self) -> HParams:
        """The vmappable numeric hyperparameters as a dict of float32 scalars."""
        return {k: jnp.asarray(getattr(self, k), jnp.float32) for k in self.HYPERPARAMS}

    def replace(self, **changes) -> "OnPolicyConfig":
        """A copy with the named fields replaced, validated again."""
        return dataclasses.replace(self, **changes)

    @property
    def randomize_ranges(self) -> dict[str, tuple]:
        """`env_randomize` as {field: (low, high)}, or (low, high, "log") for a log-uniform field."""
        return {name: tuple(bounds) for name, *bounds in self.env_randomize}

    @property
    def observed_ranges(self) -> dict[str, tuple] | None:
        """The ranges whose fields the policy observes (`env_randomize_observe`), else None."""
        return self.randomize_ranges if self.env_randomize_observe else None

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-able values (env_kwargs as a dict, env_randomize as {field: [low, high(, "log")]})."""
        out = dataclasses.asdict(self)
        out["env_kwargs"] = dict(self.env_kwargs)
        out["env_randomize"] = {name: list(bounds) for name, bounds in self.randomize_ranges.items()}
        return out


def _check_field_types(config: OnPolicyConfig) -> None:
    """ValueError naming the field unless each bool / int / float / str field holds one (by its default's type):
    a truthy "False" turned anneal_lr on, True passed as a learning rate of 1, a string discount a TypeError.
    NumPy scalars become Python ones (config.json stays writable)."""
    name = type(config).__name__
    for field in dataclasses.fields(config):
        value, default = getattr(config, field.name), field.default
        if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and not isinstance(value, jax.core.Tracer):
            value = value.item()  # a 0-d array: its number
        is_bool = isinstance(value, (bool, np.bool_))
        if isinstance(default, bool):
            ok, what, cast = is_bool, "True or False", bool
        elif isinstance(default, int):
            ok, what, cast = is_int(value), "an int", int
        elif isinstance(default, float):
            ok, what, cast = is_real(value), "a number", float
        elif isinstance(default, str):
            ok, what, cast = isinstance(value, str), "a string", str
        else:
            continue
        if not ok:
            raise ValueError(f"{name}.{field.name} must be {what}; got {value!r} ({type(value).__name__}).")
        object.__setattr__(config, field.name, cast(value))


def _randomize_entries(cls: str, value: Any) -> tuple[tuple, ...]:
    """`env_randomize` as sorted (field, low, high) or (field, low, high, "log") entries, from such entries or
    {field: (low, high[, "log"])} (a config.json's); ValueError naming the entry for a malformed one. Whether the
    fields exist is checked with the environment (`make_env`, `envs.randomization.check_ranges`)."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (tuple, list)) and all(isinstance(e, (tuple, list)) and len(e) in (3, 4) for e in value):
        items = [(e[0], e[1:]) for e in value]
    else:
        raise ValueError(f"{cls}.env_randomize must be (field, low, high) triples, e.g. ('length', 0.25, 2.0), or "
                         f"(field, low, high, 'log') for log-uniform draws; got {value!r}.")
    entries = [(name, *envs.randomization.check_range(f"{cls}.env_randomize", name, bounds)) for name, bounds in items]
    if len({e[0] for e in entries}) != len(entries):
        raise ValueError(f"{cls}.env_randomize names a field twice: {[e[0] for e in entries]}.")
    return tuple(sorted(entries))


def field_docs(config_cls: type) -> dict[str, str]:
    """{field: one-line description} from the "Attributes" sections of `config_cls`'s docstring and its bases'
    (the subclass's wins). An entry "a, b: text" documents both fields; indented lines continue an entry."""
    docs: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):
        lines = inspect.cleandoc(cls.__dict__.get("__doc__") or "").splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("Attributes")), None)
        if start is None:
            continue
        names: list[str] = []
        for line in lines[start + 1:]:
            if not line.startswith("  "):
                break  # the section ends at the first line back at the docstring's margin
            if not line.startswith("    ") and ":" in line:
                head, _, text = line.strip().partition(":")
                names = [name.strip() for name in head.split(",")]
                for name in names:
                    docs[name] = text.strip()
            else:
                for name in names:
                    docs[name] += " " + line.strip()
    return docs


def check_normalizable(cls: str, normalize_advantages: bool, size: int, where: str) -> None:
    """ValueError when advantages are standardised over groups of one sample: each becomes (A - A) / std = 0, and
    the policy never moves."""
    if normalize_advantages and size < 2:
        raise ValueError(f"{cls}.normalize_advantages standardises advantages over {where}, which hold {size} sample: "
                         "every advantage would be 0 and the policy would never move; use larger batches (or "
                         "minibatches), or normalize_advantages=False.")


def check_divides(cls: str, what: str, total: int, parts_field: str, parts: int) -> None:
    """Raise unless `parts` divides `total` (e.g. minibatches into the batch)."""
    check_int(f"{cls}.{parts_field}", parts)
    if total % parts:
        raise ValueError(
            f"{cls}.{parts_field} ({parts}) must divide {what} ({total}); choose a divisor of {total}."
        )


# ---------------------------------------------------------------------------
# Environments.
# ---------------------------------------------------------------------------


class EnvSpec(NamedTuple):
    """The wrapped, vectorised environment of a config and its params, built outside any trace (inside `train`, a
    lane's `env.<field>` hyperparameters replace fields of `params`: `lane_env_params`)."""

    env: Any
    params: Any
    discrete: bool
    action_dim: int
    observation_size: int


def make_env(config: OnPolicyConfig, num_envs: int | None = None, normalize_update: bool = True) -> EnvSpec:
    """[RandomizedParams] -> [ObserveParams] -> [PredrawnResets] -> FlattenObservation -> EpisodeStatistics
    -> [NormalizeObservation] -> [NormalizeReward] -> [ClipAction] -> VecEnv.

    Episode statistics sit below normalisation so they report the raw returns; statistics of
    the observation normaliser are shared over the vectorised batch.
    """
    env, params = envs.make(config.env_id, **dict(config.env_kwargs))
    discrete = envs.is_discrete(env, params)
    action_dim = envs.action_dim(env, params)
    _warn_if_discounts_differ(config, params)
    if config.env_randomize:  # below PredrawnResets: each drawn reset draws its episode's params too
        env = envs.RandomizedParams(env, config.env_id, config.randomize_ranges)
    if config.observed_ranges:
        env = envs.ObserveParams(env, config.observed_ranges)
    obs_size = envs.observation_size(env, params)
    if envs.PredrawnResets.wraps_step_of(env):  # rollouts draw their reset states up front
        env = envs.PredrawnResets(env)
    env = envs.EpisodeStatistics(envs.FlattenObservation(env))
    if config.normalize_observations:
        env = envs.NormalizeObservation(env, update=normalize_update, axis_name=envs.ENV_AXIS)
    if config.normalize_rewards:
        env = envs.NormalizeReward(env, config.discount, update=normalize_update, axis_name=envs.ENV_AXIS)
    if not discrete:
        env = envs.ClipAction(env)
    env = envs.VecEnv(env, num_envs or config.num_envs)
    return EnvSpec(env, params, discrete, action_dim, obs_size)


def _warn_if_discounts_differ(config: OnPolicyConfig, params: Any) -> None:
    """A tabular MDP carries its own discount, which defines its exact V, J and J* (`pgjax.tabular`) and its
    default episode length; a learner with another `discount` optimises another objective. That may be intended
    (the discount as a hyperparameter), so it warns rather than fails."""
    mdp = getattr(params, "mdp", None)
    if mdp is not None and not math.isclose(float(mdp.discount), config.discount, rel_tol=1e-6):
        warnings.warn(f"{config.env_id}: the MDP's discount is {float(mdp.discount):.6g}, which defines its exact "
                      f"J(pi) and J*, but {type(config).__name__}.discount is {config.discount:.6g}: the algorithm "
                      f"learns another objective. Set discount={float(mdp.discount):.6g} (--discount) to learn the "
                      f"MDP's, or env_kwargs discount={config.discount:.6g} (--env-kwarg) to change the MDP's.",
                      UserWarning, stacklevel=3)


# hparams entries "env.<field>" hold per-lane values of the environment's params fields.
ENV_PARAM_PREFIX = "env."


def env_param_overrides(hp: HParams) -> dict[str, Any]:
    """{field: value} of the `env.<field>` entries of a hyperparameter dict (empty if none)."""
    return {k[len(ENV_PARAM_PREFIX):]: v for k, v in hp.items() if k.startswith(ENV_PARAM_PREFIX)}


def check_hparam_names(config: OnPolicyConfig, hp: HParams) -> None:
    """ValueError unless the hyperparameter dict has exactly the config's `HYPERPARAMS` (plus any "env.<field>"
    entries, checked by `lane_env_params`): a misspelt or static name was ignored, a missing one a bare KeyError.
    Names and shapes (one number each) only, as values may be traced: `pgjax.runs.grid_lanes` checks the values."""
    names = {k for k in hp if not k.startswith(ENV_PARAM_PREFIX)}
    missing, unknown = sorted(set(config.HYPERPARAMS) - names), sorted(names - set(config.HYPERPARAMS))
    if missing or unknown:
        raise ValueError(
            f"hparams must hold {type(config).__name__}'s vmappable hyperparameters {list(config.HYPERPARAMS)}"
            f"{f'; missing {missing}' if missing else ''}{f'; unknown {unknown}' if unknown else ''} (other fields "
            "are static: set them in the config). Build it from config.hyperparams(), or use pgjax.runs.grid_lanes."
        )
    listed = sorted(k for k in config.HYPERPARAMS if isinstance(hp[k], (list, tuple)))
    if listed:  # jnp.shape of a list of tracers fails inside jax, unexplained
        raise ValueError(f"hparams: {listed} are Python lists; give each an array (one number per run, batched "
                         "along a leading axis for jax.vmap), e.g. jnp.asarray([...]), or use pgjax.runs.grid_lanes.")
    shapes = {k: jnp.shape(hp[k]) for k in config.HYPERPARAMS if jnp.shape(hp[k]) != ()}
    if shapes:  # an unbatched [2] learning rate broadcast into the parameter update: a bare TypeError, or worse
        raise ValueError(
            f"hparams: each value must be one number per run (shape ()) inside train; got shapes {shapes}. Batch "
            "them along a leading axis and vmap train over it (jax.vmap(train)(keys, hparams)), or use "
            "pgjax.runs.grid_lanes, which also checks the values."
        )


def env_grid_fields(config: OnPolicyConfig) -> dict[str, Any]:
    """{"env.<field>": default} for every numeric scalar field of the config's environment params
    (`envs.numeric_fields`): what a grid can vary per lane besides `HYPERPARAMS`."""
    _, params = envs.make(config.env_id, **dict(config.env_kwargs))
    return {ENV_PARAM_PREFIX + name: value for name, value in envs.numeric_fields(params).items()}


def lane_env_params(env_id: str, params: Any, hp: HParams) -> Any:
    """One lane's environment params: `params` (the config's) with its `env.<field>` hyperparameters in place.

    Each value must have the default field's structure and shapes (a scalar for CartPole's `length`, an `MDP` with
    the same S and A for a tabular environment's `mdp`); it is cast to the field's dtype (a grid's float32 200.0 for
    `max_steps_in_episode` becomes int32 200), and fields derived from it follow (`envs.override_params`). Runs at
    trace time, so a wrong name or shape raises ValueError before anything compiles.
    """
    overrides = env_param_overrides(hp)
    if not overrides:
        return params
    field_names = [f.name for f in dataclasses.fields(params)]
    conformed = {}
    for name, value in overrides.items():
        if name not in field_names:
            raise ValueError(f"hparams[{ENV_PARAM_PREFIX + name!r}]: {env_id}'s params have no field {name!r}; "
                             f"the fields are {', '.join(field_names)}.")
        default_leaves, structure = jax.tree_util.tree_flatten(getattr(params, name))
        leaves, value_structure = jax.tree_util.tree_flatten(value)
        shapes = [jnp.shape(x) for x in leaves]
        default_shapes = [jnp.shape(x) for x in default_leaves]
        if value_structure != structure or shapes != default_shapes:
            raise ValueError(f"hparams[{ENV_PARAM_PREFIX + name!r}]: one lane's value has leaf shapes {shapes}, but "
                             f"{env_id}'s {name} has {default_shapes} ({structure}); give one value per lane along "
                             "a leading axis that jax.vmap maps over.")
        cast = [jnp.asarray(x, jnp.result_type(d)) for x, d in zip(leaves, default_leaves)]
        conformed[name] = jax.tree_util.tree_unflatten(structure, cast)
    return envs.override_params(env_id, params, conformed)


# ---------------------------------------------------------------------------
# Rollouts.
# ---------------------------------------------------------------------------


class Transition(NamedTuple):
    """One vectorised step; a rollout stacks them to [T, N, ...].

    `next_obs` is the true next observation: the pre-reset final observation where an
    episode ended, so `next_value` = V(next_obs) bootstraps time-limit truncations correctly.
    `value` and `next_value` come from one batched critic pass after the rollout (same parameters
    as during it), not from the per-step policy calls.
    """

    obs: Array
    action: Array
    reward: Array
    terminated: Array
    truncated: Array
    log_prob: Array
    value: Array
    next_obs: Array
    next_value: Array
    returned_episode: Array
    episode_return: Array
    episode_length: Array


ActFn = Callable[[Any, Array, Array], tuple[Array, Array]]
ValueFn = Callable[[Any, Array], Array]


def rollout(
    key: Array,
    spec: EnvSpec,
    agent: Any,
    act: ActFn,
    value: ValueFn,
    env_state: Any,
    obs: Array,
    num_steps: int,
    unroll: int = 1,
) -> tuple[Any, Array, Transition]:
    """Step the vectorised environment `num_steps` times with `act` (a `lax.scan`), then compute
    `value` on every observation and true next observation in one batched call. `unroll` is the
    scan's unroll factor (speed only: results agree to float rounding).

    Returns:
      (env_state, obs, Transition with fields [T, N, ...]).
    """

    def step(carry, step_randomness):
        env_state, obs = carry
        noise, key_env = step_randomness
        action, log_prob = act(agent, obs, noise)
        next_obs, env_state, reward, terminated, truncated, info = spec.env.step(
            key_env, env_state, action, spec.params
        )
        transition = Transition(
            obs=obs,
            action=action,
            reward=reward.astype(jnp.float32),
            terminated=terminated,
            truncated=truncated,
            log_prob=log_prob,
            value=None,
            next_obs=info["final_observation"],
            next_value=None,
            returned_episode=info["returned_episode"],
            episode_return=info["episode_return"],
            episode_length=info["episode_length"],
        )
        return (env_state, next_obs), transition

    # The whole rollout's randomness drawn up front, in a few calls instead of several per step (each
    # threefry call costs ~1 us on a CPU however few numbers it makes): the policy's sampling noise,
    # one key per environment and step, and with PredrawnResets every step's reset state too.
    key_noise, key_env = jax.random.split(key)
    noise = distributions.sampling_noise(key_noise, spec.discrete, (num_steps, spec.env.num_envs, spec.action_dim))
    env_keys = jax.random.split(key_env, (num_steps, spec.env.num_envs))
    draw_resets = getattr(spec.env, "draw_resets", None)
    if draw_resets is not None:
        env_keys = draw_resets(env_keys, spec.params)
    (env_state, obs), batch = lax.scan(step, (env_state, obs), (noise, env_keys), unroll=unroll)
    values = value(agent, jnp.stack([batch.obs, batch.next_obs]))
    return env_state, obs, batch._replace(value=values[0], next_value=values[1])


def flatten_batch(tree: Any) -> Any:
    """[T, N, ...] -> [T * N, ...] on every leaf."""
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def minibatch_epochs(
    key: Array,
    state: Any,
    data: Any,
    num_epochs: int,
    num_minibatches: int,
    step: Callable[[Any, Any], tuple[Any, dict[str, Array]]],
    unroll: int = 1,
) -> tuple[Any, dict[str, Array]]:
    """`num_epochs` passes over `data` (leaves [B, ...]) in shuffled minibatches, applying
    `step(state, minibatch) -> (state, metrics)`; returns the final state and mean metrics.
    `unroll` (speed only) unrolls the minibatch scan, and the epoch scan once the minibatches are
    unrolled whole."""
    batch = jax.tree_util.tree_leaves(data)[0].shape[0]

    def epoch(state, epoch_key):
        perm = random_permutation(epoch_key, batch)
        shuffled = jax.tree_util.tree_map(
            lambda x: x[perm].reshape((num_minibatches, batch // num_minibatches) + x.shape[1:]), data
        )
        return lax.scan(step, state, shuffled, unroll=min(unroll, num_minibatches))

    epoch_unroll = max(1, min(unroll // num_minibatches, num_epochs))
    state, metrics = lax.scan(epoch, state, jax.random.split(key, num_epochs), unroll=epoch_unroll)
    return state, jax.tree_util.tree_map(jnp.mean, metrics)


def shuffle_rounds(n: int) -> int:
    """Sorting rounds `random_permutation` uses for n items; 0 means it defers to `jax.random.permutation`.

    A round sorts n random (32 - b)-bit keys, b = bits of an index; ties (about n^2 / 2^(33 - b) of them,
    expected) keep their index order, so a round is uniform unless it has one. Rounds compose: the result
    is uniform unless every round has a tie. The count makes that at most ~1/n, the bound
    `jax.random.permutation` works to (n = 512: 2 rounds; failure ~2e-4; n = 256: 1 round).
    """
    b = max(1, (n - 1).bit_length())
    spare = 33 - 3 * b  # -log2 of the expected number of ties in one round
    if spare <= 0:
        return 0
    return max(1, -(-b // spare))


def random_permutation(key: Array, n: int) -> Array:
    """A uniformly random permutation of 0..n-1 [n] (int32), by sorting random keys.

    Each round sorts one uint32 array: random bits above, the item's index in the low b bits
    (`shuffle_rounds` says how many rounds, and why ties do not bias the result beyond ~1/n). XLA's CPU
    sort has a fast path for one integer operand that a key-value sort lacks: 512 items in about 10 us a
    round, against 67 us for `jax.random.permutation` (and for `lax.top_k`, which sorts both keys and
    indices). Beyond 1024 items the low bits leave too few random ones, and this defers to
    `jax.random.permutation`.
    """
    rounds = shuffle_rounds(n)
    if rounds == 0:
        return jax.random.permutation(key, n).astype(jnp.int32)
    b = max(1, (n - 1).bit_length())
    index = jnp.arange(n, dtype=jnp.uint32)
    bits = jax.random.bits(key, (rounds, n), jnp.uint32)
    perm = None
    for r in range(rounds):
        order = lax.sort(((bits[r] >> b) << b) | index) & jnp.uint32((1 << b) - 1)
        perm = order if perm is None else perm[order]
    return perm.astype(jnp.int32)


def actor_critic(config: OnPolicyConfig, spec: EnvSpec) -> ActorCritic:
    """The config's actor-critic network (separate towers) for the environment's action space."""
    return ActorCritic(spec.action_dim, spec.discrete, config.hidden_sizes, config.activation,
                       dtype=config.network_dtype)


def sampling_act(network: ActorCritic) -> ActFn:
    """act(agent, obs [N, D], noise [N, A]) -> (a ~ pi(.|obs), log pi(a|obs)) for agents with `.params`
    (the policy alone; `noise` from `distributions.sampling_noise`)."""

    def act(agent, obs, noise):
        dist = network.apply(agent.params, obs, method="policy")
        action = dist.sample_from_noise(noise)
        return action, dist.log_prob(action)

    return act


def critic_value(network: ActorCritic) -> ValueFn:
    """value(agent, obs [..., D]) -> V(obs) [...] for agents with `.params` (the critic alone)."""

    def value(agent, obs):
        return network.apply(agent.params, obs, method="value")

    return value


# ---------------------------------------------------------------------------
# The training loop.
# ---------------------------------------------------------------------------


@struct.dataclass
class AgentState:
    """Network parameters (a pytree) and one optimiser state, kept over the parameters raveled into one
    vector (`optim.ravel_params`): the agent of PPO, A2C and REINFORCE (PPO with split_actor_critic: one
    state per network, `ppo.SplitAdamState`)."""

    params: dict
    opt_state: optax.OptState


def optimizer(
    config: OnPolicyConfig, hp: HParams, steps_per_update: int = 1, schedule_offset: int | Array = 0
) -> optax.GradientTransformation:
    """`optim.clipped_adam` with the config's (possibly vmapped) `hp`.

    With `config.anneal_lr` the rate decays over all num_updates * steps_per_update gradient steps, from
    learning_rate to final_lr_fraction * learning_rate; `steps_per_update` is 1 for A2C and REINFORCE,
    epochs x minibatches for PPO and TRPO's value function. `schedule_offset`: steps skipped so far (PPO's
    early stopping), so that the rate follows the update index rather than the steps taken.
    """
    steps = config.num_updates * steps_per_update if config.anneal_lr else None
    return optim.clipped_adam(hp["learning_rate"], hp["max_grad_norm"], steps, final_fraction=hp["final_lr_fraction"],
                              schedule_offset=schedule_offset, eps=hp["adam_eps"])


def update_learning_rate(config: OnPolicyConfig, hp: HParams, update_idx: Array) -> Array:
    """The step size of update `update_idx`'s first gradient step (TRPO: its value function's), a scalar.

    With `config.anneal_lr`: lr_0 (1 - (1 - f) u / num_updates), f = final_lr_fraction, whatever the steps per
    update (`optimizer` anneals over num_updates * steps_per_update steps, and PPO's early stopping keeps the
    schedule on the update index); without it, lr_0.
    """
    progress = update_idx / config.num_updates if config.anneal_lr else 0.0
    return optim.linear_anneal(hp["learning_rate"], progress, hp["final_lr_fraction"])


def init_params(network: ActorCritic, spec: EnvSpec, key: Array) -> Any:
    """Fresh network parameters for `spec`'s flat observations."""
    return network.init(key, jnp.zeros((spec.observation_size,), jnp.float32))


def init_agent(network: ActorCritic, spec: EnvSpec, tx: optax.GradientTransformation, key: Array) -> AgentState:
    """Fresh network parameters and the optimiser state for their flat vector."""
    params = init_params(network, spec, key)
    return AgentState(params, tx.init(optim.ravel_params(params)[0]))


def one_step_update(
    tx: optax.GradientTransformation, loss_fn: Callable[..., tuple[Array, Any]], agent: AgentState, *args: Any
) -> tuple[AgentState, Any]:
    """One `tx` step on `loss_fn(params, *args) -> (loss, aux)` (A2C, REINFORCE); returns (agent, aux)."""
    flat, unravel = optim.ravel_params(agent.params)
    (flat, opt_state), aux = optim.flat_gradient_step(tx, loss_fn, unravel)((flat, agent.opt_state), *args)
    return AgentState(unravel(flat), opt_state), aux


STEPS_SEEN = "steps_seen"
"""`kl_early_stopping`'s weight of a step's metrics (removed from them by `minibatch_descent`)."""


def kl_early_stopping(
    step: Callable[[Any, Any], tuple[Any, dict[str, Array]]], target_kl: Array, kl_name: str = "approx_kl"
) -> Callable[[tuple[Any, Array], Any], tuple[tuple[Any, Array], dict[str, Array]]]:
    """`step` that stops for the rest of the update once the policy has moved `target_kl` from the rollout's.

    The wrapped step carries `(state, stopped)`. Before each step, `metrics[kl_name]` (the minibatch's
    estimate of KL(pi_old || pi_theta) at the current parameters, e.g. PPO's approx_kl) is compared with
    `target_kl`; from the first minibatch where it exceeds it, every remaining step of the update keeps
    `state` as it is (the optimiser's state too: Adam's step count counts the steps taken; pass the skipped
    ones as `optimizer`'s schedule_offset to keep an annealed rate on the run's progress). `target_kl <= 0`
    never stops, and may be traced (a vmapped hyperparameter). The metric `steps_taken` is 1 for an applied
    step and 0 for a skipped one (its mean over an update is the fraction applied). The step's own metrics are
    multiplied by `STEPS_SEEN` (also a metric): 1 for the steps taken and for the one that stopped the update,
    0 for the later ones, whose minibatches were never looked at; `minibatch_descent` divides the means by its
    mean, so an update's metrics are those of the minibatches it saw (as in Stable-Baselines3, which stops the
    same way at 1.5 x its target_kl; CleanRL checks at the end of each epoch).
    """

    def stopping_step(carry, minibatch):
        state, stopped = carry
        new_state, metrics = step(state, minibatch)
        stopped_before = stopped
        seen = 1.0 - stopped.astype(jnp.float32)
        stopped = stopped | ((target_kl > 0) & (metrics[kl_name] > target_kl))
        state = jax.tree_util.tree_map(lambda new, old: jnp.where(stopped, old, new), new_state, state)
        # Selected, not multiplied by seen: an inf metric of an unseen minibatch times 0 was NaN.
        metrics = {name: jnp.where(stopped_before, 0.0, value) for name, value in metrics.items()}
        return (state, stopped), {**metrics, "steps_taken": 1.0 - stopped.astype(jnp.float32), STEPS_SEEN: seen}

    return stopping_step


def minibatch_descent(
    key: Array,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[Any, Any], tuple[Array, dict[str, Array]]],
    params: Any,
    opt_state: optax.OptState,
    data: Any,
    num_epochs: int,
    num_minibatches: int,
    unroll: int = 1,
    norm_name: str = "grad_norm",
    target_kl: Array | None = None,
) -> tuple[Any, optax.OptState, dict[str, Array]]:
    """`minibatch_epochs` of `tx` steps on `loss_fn(params, minibatch) -> (loss, metrics)`, taken on the flat
    parameter vector (one fused optimiser step each); returns (params, opt_state, mean metrics), the metrics
    including `norm_name`: the mean pre-clip gradient norm over the steps. With `target_kl` the steps stop
    early as `kl_early_stopping` says (the loss's metrics must then hold `approx_kl`), and the metrics are means
    over the minibatches seen: the steps taken and the one that stopped the update."""
    flat, unravel = optim.ravel_params(params)
    step = optim.flat_gradient_step(tx, loss_fn, unravel, norm_name)
    state = (flat, opt_state)
    if target_kl is None:
        state, metrics = minibatch_epochs(key, state, data, num_epochs, num_minibatches, step, unroll)
    else:
        stopping = kl_early_stopping(step, target_kl)
        (state, _), metrics = minibatch_epochs(key, (state, jnp.array(False)), data, num_epochs, num_minibatches,
                                               stopping, unroll)
        seen = metrics.pop(STEPS_SEEN)  # > 0: the first step always counts
        metrics = {name: value if name == "steps_taken" else value / seen for name, value in metrics.items()}
    flat, opt_state = state
    return unravel(flat), opt_state, metrics


def policy_shift_kl(network: ActorCritic, old_params: Any, new_params: Any, obs: Array) -> Array:
    """Mean KL(pi_old || pi_new) over `obs`: how far an update moved the policy."""
    policy = lambda params: network.apply(params, obs, method="policy")  # noqa: E731
    return losses.mean_kl(policy(old_params), policy(new_params))


class Algorithm(NamedTuple):
    """An online algorithm as four pure functions (module docstring): init(key, spec, hp) -> agent,
    act(agent, obs [N, D], noise) -> (action [N, ...], log_prob [N]), value(agent, obs [..., D]) -> V [...],
    update(agent, batch [T, N], key, hp, update_idx) -> (agent, metrics dict of scalars)."""

    init: Callable[[Array, EnvSpec, HParams], Any]
    act: ActFn
    value: ValueFn
    update: Callable[[Any, Transition, Array, HParams, Array], tuple[Any, dict[str, Array]]]


class TrainOutput(NamedTuple):
    """What `train(key)` returns (leading [seeds, ...] axes when vmapped).

    Attributes:
      agent: final agent state (its `.params` are the network parameters).
      env_state: final environment state (holds observation-normaliser statistics).
      metrics: dict of [num_updates] arrays: `env_steps`, `lr` (`update_learning_rate`),
        `episode_return` (mean return of the episodes finished during the update, NaN if none did),
        `episode_length`, `episodes_finished`, plus the algorithm's own (losses, entropy, KL, ...), and with
        `config.eval_every` `eval_return` (mean return of the evaluation episodes after that update, NaN
        between evaluations).
    """

    agent: Any
    env_state: Any
    metrics: dict[str, Array]


class RunState(NamedTuple):
    """Everything one update hands the next (`train.start(key)`, `train.advance`): a run resumed from it continues
    exactly as if it had not stopped.

    Attributes:
      agent: the agent state (parameters and optimiser states).
      env_state: the vectorised environments' state (observation statistics included).
      obs: [num_envs, ...] the current observations.
      key: the training loop's key, split once per update.
      eval_key: the in-run evaluations' key (`EVAL_KEY_STREAM`), folded with the update index.
    """

    agent: Any
    env_state: Any
    obs: Array
    key: Array
    eval_key: Array


ProgressFn = Callable[[Array, dict[str, Array]], None]

# fold_in(key, EVAL_KEY_STREAM) seeds the in-run evaluations (eval_every), apart from split(key, 3)'s training keys.
EVAL_KEY_STREAM = 0x6576616C


def evaluation_stream(run_key: Array) -> Array:
    """The in-run evaluations' key of the run `train(run_key)` (`RunState.eval_key`), apart from its training keys."""
    return jax.random.fold_in(run_key, EVAL_KEY_STREAM)


def evaluation_key(run_key: Array, update: Any) -> Array:
    """The key of the in-run evaluation after update `update` (0-based) of the run `train(run_key)`.

    `runs.evaluate(evaluation_key(run_key, num_updates - 1), config, params, obs_statistics, config.eval_episodes)`
    with the run's final parameters and statistics runs the episodes whose mean is its last `eval_return` (to float
    rounding: the run's episodes ran inside its compiled program; tested through train.py).
    """
    return jax.random.fold_in(evaluation_stream(run_key), update)


PROGRESS_CALLS = 100  # progress callbacks per run (at most; plus the last update): a 1% progress bar


def first_episode_ends(returned_episode: Array) -> Array:
    """The flags [T, N] of each environment's first episode end in a rollout (the others cleared)."""
    return returned_episode & (jnp.cumsum(returned_episode, axis=0) == 1)


def episode_metrics(batch: Transition, first_only: bool = False) -> dict[str, Array]:
    """Means over the episodes that finished in a rollout (fields [T, N]): "episode_return" and "episode_length"
    (NaN when none finished, `envs.finished_episode_mean`) and "episodes_finished" (an int32 count). With
    `first_only`, over each environment's first episode only (`restarts_episodes`: the episodes the update learns
    from; the later ones that end before the rollout does are the shorter ones, a biased sample)."""
    returned = first_episode_ends(batch.returned_episode) if first_only else batch.returned_episode
    info = {
        "returned_episode": returned,
        "episode_return": batch.episode_return,
        "episode_length": batch.episode_length,
    }
    return {
        "episode_return": envs.finished_episode_mean(info, "episode_return"),
        "episode_length": envs.finished_episode_mean(info, "episode_length"),
        "episodes_finished": jnp.sum(returned).astype(jnp.int32),
    }


def check_episodes_fit(config: OnPolicyConfig, spec: EnvSpec) -> None:
    """For a config that resets every environment at each update (`restarts_episodes`): `ValueError` unless
    `num_steps` covers the environment's step limit (its params' `max_steps_in_episode`, the largest its
    `env_randomize` range draws if drawn), so that every environment's first episode ends inside the rollout.
    Grids over `env.max_steps_in_episode` are checked by `pgjax.runs.grid_lanes`; per-lane limits passed to
    `train(key, hparams)` directly cannot be (they may be traced): `episodes_finished` below num_envs shows first
    episodes that did not end (they are left out of the update)."""
    name = type(config).__name__
    limit = getattr(spec.params, "max_steps_in_episode", None)
    if limit is None:
        raise ValueError(f"{name}: {config.env_id} has no step limit (params.max_steps_in_episode), so episodes that "
                         "start at an update need not end inside its rollout; use episodic=False for this environment.")
    limit = int(np.max(np.asarray(limit)))
    if "max_steps_in_episode" in config.randomize_ranges:  # every episode draws its limit: the largest it can draw
        low, high = config.randomize_ranges["max_steps_in_episode"][:2]
        limit = max(math.floor(low), math.ceil(high) - 1)
    if config.num_steps < limit:
        raise ValueError(
            f"{name}.num_steps ({config.num_steps}) must be at least {config.env_id}'s step limit "
            f"(max_steps_in_episode={limit}) with episodic=True, so that every environment's first episode ends inside "
            f"the rollout; raise num_steps to {limit} or lower the limit (env_kwargs max_steps_in_episode)."
        )


def make_on_policy_train(
    config: OnPolicyConfig, algorithm: Algorithm, spec: EnvSpec | None = None, progress: ProgressFn | None = None
) -> Callable[..., TrainOutput]:
    """Build `train(key, hparams=None) -> TrainOutput`: the whole run as one pure function.

    `jax.jit(train)(key)` runs it in one compiled call; `jax.vmap(train)(keys)` runs many
    seeds; `jax.vmap(train, in_axes=(None, 0))(key, hparams)` with batched hyperparameters
    (from `config.hyperparams()`) runs a sweep. `progress(update_idx, metrics)` is called on
    the host after every `PROGRESS_CALLS`-th part of the run and after the last update (a
    `jax.debug.callback`, once per seed under vmap; leave it None for no callbacks). Each call is a
    host round trip: after every update the 8-seed demo ran 27 s instead of 12.5 s without callbacks.

    The same run in segments (checkpoints): `train.start(key, hparams=None) -> RunState` and
    `train.advance(state, first_update, hparams=None, count=num_updates) -> (RunState, metrics [count])` (count
    static; first_update may be traced, so equal-length segments share one compile; `train.config` is the config).
    Segments of any lengths in turn compute train(key)'s run: `pgjax.runs.train_in_segments` (and
    `experiments/train.py --checkpoint-every`) saves the `RunState` between them.

    `spec` (default `make_env(config)`) must be the config's own environment: in-run evaluation, `runs.evaluate`
    and saved runs rebuild it from `config.env_id`. To train on your own environment, register it under an id
    (`pgjax.envs.register`, experiments/custom_env.py) and name that id in the config.
    """
    spec = make_env(config) if spec is None else spec
    if config.restarts_episodes:
        check_episodes_fit(config, spec)
    num_updates = config.num_updates
    every = max(1, num_updates // PROGRESS_CALLS)
    if config.eval_every:
        episode_returns = evaluation.make_episode_returns(
            config.env_id, config.env_kwargs, actor_critic(config, spec), config.eval_episodes,
            deterministic=not config.eval_stochastic, normalize_observations=config.normalize_observations,
            observed_ranges=config.observed_ranges,
        )

        def evaluate(key, agent, env_state, env_params, update_idx):
            """Mean return of `eval_episodes` episodes after every eval_every-th and the last update, else NaN."""
            stats = evaluation.observation_statistics(env_state)  # [num_envs, ...], the same in every env
            stats = None if stats is None else jax.tree_util.tree_map(lambda x: x[0], stats)
            due = ((update_idx + 1) % config.eval_every == 0) | (update_idx == num_updates - 1)
            # The predicate is the update index, never batched, so under vmap this stays a branch: the
            # episodes run only at the evaluations.
            return lax.cond(
                due,
                lambda: jnp.nanmean(
                    episode_returns(jax.random.fold_in(key, update_idx), agent.params, stats, env_params)
                ).astype(jnp.float32),  # float64 under jax_enable_x64: the branches need one dtype
                lambda: jnp.float32(jnp.nan),
            )

    def lane_spec(hp: HParams) -> EnvSpec:
        check_hparam_names(config, hp)
        clash = sorted(set(env_param_overrides(hp)) & set(config.randomize_ranges))
        if clash:
            raise ValueError(f"hparams: {[ENV_PARAM_PREFIX + name for name in clash]} are also in env_randomize, "
                             "which redraws them at every reset; give each field one or the other.")
        env = spec.env
        if config.normalize_rewards:  # the lane's discount (the wrapper was built with the config's)
            env = envs.with_reward_discount(env, hp["discount"])
        return spec._replace(env=env, params=lane_env_params(config.env_id, spec.params, hp))

    def start(key: Array, hparams: HParams | None = None) -> RunState:
        """The run before its first update: initial agent, reset environments and the loop's keys."""
        hp = config.hyperparams() if hparams is None else hparams
        key_init, key_reset, key_loop = jax.random.split(key, 3)
        key_eval = evaluation_stream(key)  # its own stream: the training keys stay as they were
        agent = algorithm.init(key_init, spec, hp)
        obs, env_state = spec.env.reset(key_reset, lane_spec(hp).params)
        return RunState(agent, env_state, obs, key_loop, key_eval)

    def advance(
        state: RunState, first_update: Array, hparams: HParams | None = None, count: int = num_updates
    ) -> tuple[RunState, dict[str, Array]]:
        """Updates first_update .. first_update + count - 1 (count static) from `state`: (state after them, metrics
        dict of [count] arrays)."""
        hp = config.hyperparams() if hparams is None else hparams
        key_eval = state.eval_key
        env = lane_spec(hp)

        def one_update(carry, update_idx):
            agent, env_state, obs, key = carry
            key, key_rollout, key_update = jax.random.split(key, 3)
            if config.restarts_episodes:  # every environment on a fresh episode, the normalisers' statistics kept
                key_rollout, key_reset = jax.random.split(key_rollout)
                obs, env_state = envs.with_running_statistics(env.env, env_state).reset(key_reset, env.params)
            env_state, obs, batch = rollout(
                key_rollout, env, agent, algorithm.act, algorithm.value, env_state, obs, config.num_steps,
                config.scan_unroll
            )
            learn_batch = batch._replace(reward=batch.reward * hp["reward_scale"])
            agent, metrics = algorithm.update(agent, learn_batch, key_update, hp, update_idx)
            metrics = {
                "env_steps": (update_idx + 1) * config.batch_size,
                "lr": update_learning_rate(config, hp, update_idx),  # "learning_rate" names a grid cell's field
                **episode_metrics(batch, first_only=config.restarts_episodes),
                **metrics,
            }
            if config.eval_every:
                metrics["eval_return"] = evaluate(key_eval, agent, env_state, env.params, update_idx)
            if progress is not None:
                report = (update_idx % every == 0) | (update_idx == num_updates - 1)
                side = parallel.axis_index_or_none(parallel.ACTOR_CRITIC_AXIS)
                if side is not None:  # both devices run this loop (actor_critic_sharded): report once
                    report = report & (side == 0)
                lax.cond(report, lambda m: jax.debug.callback(progress, update_idx, m), lambda m: None, metrics)
            return (agent, env_state, obs, key), metrics

        (agent, env_state, obs, key), metrics = lax.scan(
            one_update, (state.agent, state.env_state, state.obs, state.key), first_update + jnp.arange(count)
        )
        return RunState(agent, env_state, obs, key, key_eval), metrics

    def train(key: Array, hparams: HParams | None = None) -> TrainOutput:
        state, metrics = advance(start(key, hparams), 0, hparams)
        return TrainOutput(state.agent, state.env_state, metrics)

    train.start = start  # type: ignore[attr-defined]
    train.advance = advance  # type: ignore[attr-defined]
    train.config = config  # type: ignore[attr-defined]
    return train


def make_train_from(
    config: OnPolicyConfig,
    make_algorithm: Callable[[OnPolicyConfig, ActorCritic], Algorithm],
    progress: ProgressFn | None = None,
) -> Callable[..., TrainOutput]:
    """`train(key, hparams=None)` for an algorithm built by `make_algorithm(config, network)` on the config's
    environment and actor-critic network (what each algorithm module's `make_train` does)."""
    spec = make_env(config)
    return make_on_policy_train(config, make_algorithm(config, actor_critic(config, spec)), spec, progress)
