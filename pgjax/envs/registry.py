"""`make(env_id, **kwargs)`: gymnax environments and our tabular MDPs behind one id."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from pgjax.envs.tabular_env import TabularEnv, TabularEnvParams, default_horizon
from pgjax.tabular.mdp import MDP, chain_mdp, gridworld_mdp, random_mdp

TABULAR_PREFIX = "tabular:"


def _random(num_states: int = 10, num_actions: int = 3, seed: int = 0, **kwargs: Any) -> MDP:
    return random_mdp(jax.random.PRNGKey(seed), num_states, num_actions, **kwargs)


_TABULAR_BUILDERS: dict[str, Callable[..., MDP]] = {
    "chain": chain_mdp,
    "gridworld": gridworld_mdp,
    "random": _random,
}


def env_ids() -> list[str]:
    """Every id `make` accepts: gymnax's registered ids, "tabular:<name>" and the ids given to `register`."""
    return list(gymnax.registered_envs) + [TABULAR_PREFIX + name for name in _TABULAR_BUILDERS] + list(_REGISTERED)


# ---------------------------------------------------------------------------
# Your own environments.
# ---------------------------------------------------------------------------

_REGISTERED: dict[str, Callable[..., Any]] = {}
_SOURCES: dict[str, str | None] = {}
_REGISTRATIONS = [0]  # bumped by every register: caches of compiled programs keyed by an id include it


def register(env_id: str, make_fn: Callable[..., Any], *, overwrite: bool = False) -> None:
    """Make `env_id` an id of `make`, and so of every config's `env_id`, `train.py --env`, in-run evaluation,
    `runs.load_run` and `runs.evaluate` (in this process: register before building configs or loading runs).

        class Corridor(gymnax.environments.environment.Environment): ...      # gymnax 1.x reset / step
        envs.register("Corridor-v0", lambda **kw: Corridor(**kw))             # or -> (env, params)
        config = PPOConfig(env_id="Corridor-v0", env_kwargs={"length": 8})  # keywords reach make_fn

    `make_fn(**constructor_keywords)` returns a gymnax-style environment (its `default_params` are used) or an
    (env, params) pair, and `make_fn()` the default one; as for gymnax ids, a keyword of `make` that names a
    params field overrides that field instead. The environment must follow gymnax 1.x: `reset(key, params) ->
    (obs, state)`, `step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)`
    auto-resetting, `observation_space` / `action_space` (`gymnax.environments.spaces` Discrete or Box) and
    numeric observations of the space's shape.
    The first `make` of each id and keywords checks that (`check_interface`) and that a reset and 3 random steps
    are finite, with a ValueError naming what is wrong.

    Args:
      env_id: a new id (not a gymnax id, not "tabular:..."), e.g. "Corridor-v0".
      make_fn: the constructor, called by every `make(env_id, **kwargs)`.
      overwrite: replace an id registered before (compiled programs built from the old one keep it).
    """
    if not isinstance(env_id, str) or not env_id or env_id.startswith(TABULAR_PREFIX) or \
            env_id in gymnax.registered_envs:
        raise ValueError(f"register: env_id must be a new, non-empty string, not a gymnax id or one starting with "
                         f"{TABULAR_PREFIX!r}; got {env_id!r}.")
    if not callable(make_fn):
        raise ValueError(f"register({env_id!r}): make_fn must be callable (e.g. the environment's class); got "
                         f"{make_fn!r}.")
    if env_id in _REGISTERED and not overwrite and _REGISTERED[env_id] is not make_fn:
        raise ValueError(f"register: {env_id!r} is registered already (by {_REGISTERED[env_id]!r}); pass "
                         "overwrite=True to replace it, or choose another id.")
    _REGISTERED[env_id] = make_fn
    _SOURCES[env_id] = _source_file(make_fn)
    _REGISTRATIONS[0] += 1
    for cache_key in [k for k in _FIRST_STEPS if k[0] == env_id]:  # re-registered: check the new one
        del _FIRST_STEPS[cache_key]
    _INTERFACE_CHECKED.difference_update({k for k in _INTERFACE_CHECKED if k[0] == env_id})


def registered_source(env_id: str) -> str | None:
    """The file that defines a registered id's `make_fn` (None for a gymnax or tabular id, or when unknown, e.g.
    a function typed into a notebook): `runs.save_run` records it, so that a run's reader knows what to import."""
    return _SOURCES.get(env_id)


def _source_file(make_fn: Callable[..., Any]) -> str | None:
    try:
        path = inspect.getsourcefile(make_fn)
    except TypeError:  # a builtin or a callable instance
        path = inspect.getsourcefile(type(make_fn)) if not inspect.isbuiltin(make_fn) else None
    return os.path.abspath(path) if path and os.path.isfile(path) else None


def registrations() -> int:
    """How many times `register` has run in this process (a cache key for programs compiled from an id)."""
    return _REGISTRATIONS[0]


def import_env_module(name: str) -> None:
    """Import a module, by dotted name ("my_envs") or path ("experiments/my_envs.py"), that calls `register` when
    imported: how `train.py --env-module` and `evaluate.py --env-module` learn of your environments."""
    try:
        if name.endswith(".py"):
            if not os.path.isfile(name):
                raise ValueError(f"--env-module {name!r}: no such file.")
            module_name = os.path.splitext(os.path.basename(name))[0]  # importable by that name afterwards
            loaded = sys.modules.get(module_name)
            if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "") or "") == os.path.abspath(name):
                return  # imported already: registered already
            spec = importlib.util.spec_from_file_location(module_name, name)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses (flax.struct) look their module up while it executes
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
        else:
            importlib.import_module(name)
    except ImportError as err:
        raise ValueError(f"--env-module {name!r} could not be imported ({err}); give a module on the path or a "
                         ".py file.") from err


_INTERFACE_CHECKED: set[tuple[str, str]] = set()


def _check_registered(env_id: str, env: Any, params: Any, constructor_kwargs: dict[str, Any]) -> None:
    """The interface and first-steps checks of a registered id, once per id and constructor keywords that pass."""
    cache_key = (env_id, repr(constructor_kwargs))
    if cache_key not in _INTERFACE_CHECKED:
        check_interface(env_id, env, params)
        check_first_steps(env_id, env, params, {}, constructor_kwargs)
        _INTERFACE_CHECKED.add(cache_key)


def _env_and_params(made: Any) -> tuple[Any, Any]:
    """What a `make_fn` returned as (env, params): an (env, params) pair, or an environment and its default_params."""
    return made if isinstance(made, tuple) else (made, getattr(made, "default_params", None))


def check_interface(env_id: str, env: Any, params: Any) -> None:
    """ValueError naming the part of the gymnax 1.x interface that `env` (with `params`) does not follow: params a
    dataclass (`flax.struct`), Discrete or Box spaces, reset -> (obs, state), step -> 6 values, numeric
    observations shaped like `observation_space`, scalar reward, terminated and truncated. Traced abstractly
    (`jax.eval_shape`): nothing is compiled or run."""
    from gymnax.environments import spaces as gymnax_spaces

    where = f"environment {env_id!r} ({type(env).__name__})"
    if not dataclasses.is_dataclass(params):
        raise ValueError(f"{where}: its params must be a dataclass (flax.struct.dataclass, as gymnax's "
                         f"EnvParams); got {type(params).__name__}. Return (env, params) from make_fn or give the "
                         "environment a default_params property.")
    for method in ("reset", "step", "observation_space", "action_space"):
        if not callable(getattr(env, method, None)):
            raise ValueError(f"{where}: has no {method} method; subclass gymnax.environments.environment."
                             "Environment (gymnax 1.x).")
    action_space = env.action_space(params)
    if not isinstance(action_space, (gymnax_spaces.Discrete, gymnax_spaces.Box)):
        raise ValueError(f"{where}: action_space must be a gymnax Discrete or Box; got {type(action_space).__name__}.")
    obs_space = env.observation_space(params)
    key = jax.random.key(0)
    try:
        reset = jax.eval_shape(env.reset, key, params)
    except Exception as err:  # noqa: BLE001 - any failure here is the environment's, reported as such
        raise ValueError(f"{where}: reset(key, params) failed: {type(err).__name__}: {err}") from err
    if not (isinstance(reset, tuple) and len(reset) == 2):
        raise ValueError(f"{where}: reset(key, params) must return (obs, state); got {_describe(reset)}.")
    obs, state = reset
    action = jax.eval_shape(lambda k: action_space.sample(k), key)
    try:
        out = jax.eval_shape(env.step, key, state, action, params)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{where}: step(key, state, action, params) failed on a sampled action: "
                         f"{type(err).__name__}: {err}") from err
    if not (isinstance(out, tuple) and len(out) == 6):
        raise ValueError(f"{where}: step must return gymnax 1.x's (obs, state, reward, terminated, truncated, info); "
                         f"got {_describe(out)} (gymnax 0.0.x returned 5: (obs, state, reward, done, info)).")
    for name, value in (("reset", obs), ("step", out[0])):
        if not (hasattr(value, "shape") and (jnp.issubdtype(value.dtype, jnp.number) or value.dtype == jnp.bool_)):
            raise ValueError(f"{where}: {name}'s observation must be one numeric (or boolean) array; got "
                             f"{_describe(value)}.")
        if tuple(value.shape) != tuple(obs_space.shape):
            raise ValueError(f"{where}: {name}'s observation has shape {tuple(value.shape)}, but observation_space "
                             f"says {tuple(obs_space.shape)}; make them agree.")
    for name, value in zip(("reward", "terminated", "truncated"), out[2:5]):
        if getattr(value, "shape", None) != ():
            raise ValueError(f"{where}: step's {name} must be a scalar (shape ()); got {_describe(value)}.")


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a {len(value)}-tuple"
    shape = getattr(value, "shape", None)
    return f"shape {tuple(shape)} {value.dtype}" if shape is not None else type(value).__name__


def _unknown(env_id: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(env_id, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    examples = ["CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0"]
    examples += [TABULAR_PREFIX + name for name in _TABULAR_BUILDERS]
    return ValueError(
        f"Unknown environment id {env_id!r}.{hint} Valid ids include {', '.join(examples)}; "
        "see pgjax.envs.env_ids() for all of them; pgjax.envs.register adds your own."
    )


def _accepted(fn: Callable[..., Any]) -> str:
    return ", ".join(p for p in inspect.signature(fn).parameters if p not in ("kwargs", "key"))


def make(env_id: str, **kwargs: Any) -> tuple[Any, Any]:
    """Build an environment and its default params from an id.

    Args:
      env_id: any gymnax id (e.g. "CartPole-v1", "Pendulum-v1"; see `env_ids()`),
        "tabular:chain", "tabular:gridworld", "tabular:random" (a `TabularEnv` over
        `pgjax.tabular.chain_mdp`, `gridworld_mdp` or `random_mdp`), or an id given to `register`.
      **kwargs: a keyword naming a field of the params (e.g. `max_steps_in_episode`)
        overrides that field (fields derived from it follow: `override_params`); the others go to the gymnax
        constructor, or to the MDP builder
        for tabular ids ("tabular:random" takes `num_states=10, num_actions=3, seed=0` and
        `random_mdp`'s keywords).

    Returns:
      (env, env_params).

    Raises:
      ValueError: unknown id or keyword, or a gymnax environment whose data cannot be fetched.
    """
    if not isinstance(env_id, str):
        raise ValueError(f"Environment id must be a string; got {type(env_id).__name__}.")
    if env_id.startswith(TABULAR_PREFIX):
        return _make_tabular(env_id, kwargs)
    registered = env_id in _REGISTERED
    if registered:
        make_fn = _REGISTERED[env_id]
        construct = lambda **kw: _env_and_params(make_fn(**kw))  # noqa: E731
    elif env_id in gymnax.registered_envs:
        construct = functools.partial(_gymnax_make, env_id)
    else:
        raise _unknown(env_id, env_ids())
    env, params = construct()
    # A keyword naming a params field overrides it; the others go to the constructor, which then builds again.
    field_names = {f.name for f in dataclasses.fields(params)} if dataclasses.is_dataclass(params) else set()
    overrides = {k: v for k, v in kwargs.items() if k in field_names}
    constructor_kwargs = {k: v for k, v in kwargs.items() if k not in field_names}
    if constructor_kwargs:
        try:
            env, params = construct(**constructor_kwargs)
        except TypeError as err:
            raise ValueError(
                f"make({env_id!r}): bad keyword arguments {sorted(constructor_kwargs)} ({err}). "
                f"Params fields that can be overridden: {', '.join(sorted(field_names))}."
            ) from None
    if registered:
        _check_registered(env_id, env, params, constructor_kwargs)
    params = override_params(env_id, params, overrides)
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(overrides))
    if overrides and not traced:  # traced values (make inside a traced function) cannot be checked
        check_first_steps(env_id, env, params, overrides, constructor_kwargs)
    return env, params


def check_first_steps(env_id: str, env: Any, params: Any, overrides: dict[str, Any],
                      constructor_kwargs: dict[str, Any] | None = None, num_steps: int = 3) -> None:
    """ValueError naming the overridden fields when the environment's reset or first `num_steps` steps (random
    actions, a fixed key) give a non-finite observation or reward: settings the dynamics cannot run with (CartPole
    at length 0 divides by 0), which would otherwise train on NaN or evaluate to plausible-looking returns.

    One compiled program per id and constructor keywords (CartPole ~0.5 s once; the steps are a `lax.scan`, so a
    large environment compiles its step once), run eagerly even when `make` is called under `jit`."""
    cache_key = (env_id, repr(constructor_kwargs), num_steps)  # environments made alike step alike: one compile
    if cache_key not in _FIRST_STEPS:
        _FIRST_STEPS[cache_key] = jax.jit(functools.partial(_first_steps, env, num_steps))
    with jax.ensure_compile_time_eval():  # concrete params: the check runs now, also inside a traced function
        finite = np.asarray(_FIRST_STEPS[cache_key](params))  # [num_steps + 1]: the reset, then each step
    if not finite.all():
        first = int(np.argmin(finite))
        where = "reset" if first == 0 else f"step {first}"
        settings = f"with {overrides} " if overrides else ""
        raise ValueError(f"{env_id}: {settings}the environment's {where} gives a non-finite observation or "
                         "reward: the dynamics cannot run with these values; choose others.")


_FIRST_STEPS: dict[tuple, Callable[[Any], Any]] = {}  # the compiled checks, by id and constructor keywords


def _first_steps(env: Any, num_steps: int, params: Any) -> Any:
    """[num_steps + 1] flags: the reset's observation, then each random-action step's observation and reward,
    finite."""
    def finite(*values: Any) -> Any:
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(values)]))

    key_reset, key_steps = jax.random.split(jax.random.key(0))
    obs, state = env.reset(key_reset, params)

    def step(state, key):
        key_action, key_step = jax.random.split(key)
        action = env.action_space(params).sample(key_action)
        obs, state, reward, *_ = env.step(key_step, state, action, params)
        return state, finite(obs, reward)

    _, flags = jax.lax.scan(step, state, jax.random.split(key_steps, num_steps))
    return jnp.concatenate([finite(obs)[None], flags])


# gymnax's CartPole keeps two derived quantities as params fields of their own (its step reads them, never the
# masses and length behind them), so overriding masspole alone would silently leave the old dynamics in place.
# Each entry: derived field -> (the fields it derives from, how).
_DERIVED_PARAMS: dict[str, dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]]] = {
    "CartPole-v1": {
        "total_mass": (("masscart", "masspole"), lambda p: p.masscart + p.masspole),
        "polemass_length": (("masspole", "length"), lambda p: p.masspole * p.length),
    },
}


def derived_fields(env_id: str) -> tuple[str, ...]:
    """The params fields `override_params` recomputes from others for `env_id` (CartPole-v1: total_mass and
    polemass_length); empty for most ids."""
    return tuple(_DERIVED_PARAMS.get(env_id, {}))


def numeric_fields(params: Any) -> dict[str, Any]:
    """{field: value} of the params' numeric scalar fields (ints and floats, not bools): those a grid may vary per
    lane (`env.<field>`) and domain randomisation may draw (CartPole-v1: gravity, masspole, length, ...,
    max_steps_in_episode; a tabular environment: max_steps_in_episode, its MDP being arrays)."""
    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def override_params(env_id: str, params: Any, overrides: dict[str, Any]) -> Any:
    """`params` with the fields named in `overrides` replaced, and any field derived from them recomputed.

    Derived fields (CartPole-v1: total_mass = masscart + masspole, polemass_length = masspole * length) follow
    their inputs unless `overrides` names them too. Values may be traced (per-lane params under `jax.vmap`).

    Concrete values of numeric scalar fields are checked (`check_param_value`) and whole floats for int fields
    become ints.

    Raises:
      ValueError: a name that is not a field of `params`, or a value `check_param_value` rejects.
    """
    fields = [f.name for f in dataclasses.fields(params)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"{env_id}: {unknown} are not fields of its params; the fields are {', '.join(fields)}.")
    numeric = numeric_fields(params)
    overrides = dict(overrides)
    for name, value in overrides.items():
        # Arrays, lists and strings are checked too (refused): they raised bare TypeErrors further on.
        if name in numeric and not isinstance(value, jax.core.Tracer):
            check_param_value(env_id, name, numeric[name], value)
            if isinstance(numeric[name], int) and isinstance(value, (float, np.floating)):
                overrides[name] = int(value)  # 200.0 from a float-typed source: the field's own type
    params = params.replace(**overrides)
    for name, (inputs, derive) in _DERIVED_PARAMS.get(env_id, {}).items():
        if name not in overrides and any(field in overrides for field in inputs):
            params = params.replace(**{name: derive(params)})
    return params


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def check_param_value(env_id: str, name: str, default: Any, value: Any) -> None:
    """ValueError naming the field unless `value` can stand in for the numeric params field `name` (default
    `default`): a finite real number, whole for an int field, and >= 1 for the step limit."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating, np.ndarray,
                                                                       jax.Array)):
        raise ValueError(f"{env_id}: {name} must be a number (default {default}); got {value!r}.")
    if np.ndim(value) != 0:
        raise ValueError(f"{env_id}: {name} must be one number, a scalar (default {default}); got {value!r}.")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{env_id}: {name} must be finite; got {value}.")
    if isinstance(default, int) and value != int(value):
        raise ValueError(f"{env_id}: {name} is an int field (default {default}); got {value}, give a whole number.")
    # The value as the environment computes with it: int32, or JAX's default float (float32 unless x64).
    if isinstance(default, int) and not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{env_id}: {name} is an int32 field; got {value:g}, beyond [{INT32_MIN}, {INT32_MAX}].")
    float_max = float(jnp.finfo(jnp.result_type(float)).max)
    if not isinstance(default, int) and abs(value) > float_max:
        raise ValueError(f"{env_id}: {name} = {value:g} overflows {jnp.dtype(jnp.result_type(float)).name} "
                         f"(max {float_max:.4g}), the dtype the environment computes in.")
    if name == "max_steps_in_episode" and value < 1:
        raise ValueError(f"{env_id}: {name} (the episode's step limit) must be >= 1; got {value:g}.")


def _gymnax_make(env_id: str, **kwargs):
    try:
        return gymnax.make(env_id, **kwargs)
    except OSError as err:  # e.g. MNISTBandit-bsuite downloads MNIST when it is created
        raise ValueError(
            f"make({env_id!r}): gymnax failed while building it ({type(err).__name__}: {err}). This environment "
            "fetches data when it is created: run it once with network access, or choose another id."
        ) from err


def _make_tabular(env_id: str, kwargs: dict[str, Any]) -> tuple[TabularEnv, TabularEnvParams]:
    name = env_id[len(TABULAR_PREFIX) :]
    if name not in _TABULAR_BUILDERS:
        raise _unknown(env_id, env_ids())
    builder = _TABULAR_BUILDERS[name]
    kwargs = dict(kwargs)
    max_steps = kwargs.pop("max_steps_in_episode", None)
    try:
        mdp = builder(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"make({env_id!r}): bad keyword arguments {sorted(kwargs)} ({err}). "
            f"Accepted: max_steps_in_episode, {_accepted(builder)}."
        ) from None
    if max_steps is not None:  # as for a gymnax id: a bool, fraction, NaN or value < 1 is refused; 200.0 is 200
        check_param_value(env_id, "max_steps_in_episode", default_horizon(np.asarray(mdp.discount)), max_steps)
        max_steps = int(max_steps)
    env = TabularEnv(mdp, max_steps_in_episode=max_steps, name=name)
    return env, env.default_params
