"""Online policy-gradient algorithms, each a validated config and `make_train(config) -> train(key, hparams)`.

    from pgjax.algos import ppo
    config = ppo.PPOConfig(env_id="CartPole-v1", total_timesteps=500_000)
    train = jax.jit(jax.vmap(ppo.make_train(config)))
    out = train(jax.random.split(jax.random.key(0), 8))    # 8 seeds, one compiled call
"""

from pgjax.algos import a2c, common, ppo, reinforce, trpo
from pgjax.algos.a2c import A2CConfig
from pgjax.algos.common import OnPolicyConfig, TrainOutput
from pgjax.algos.ppo import PPOConfig
from pgjax.algos.reinforce import REINFORCEConfig
from pgjax.algos.trpo import TRPOConfig

ALGORITHMS = {
    "ppo": (PPOConfig, ppo.make_train),
    "a2c": (A2CConfig, a2c.make_train),
    "trpo": (TRPOConfig, trpo.make_train),
    "reinforce": (REINFORCEConfig, reinforce.make_train),
}


def get(name: str):
    """(ConfigClass, make_train) of an algorithm by name; ValueError listing the names otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"Unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}.") from None


__all__ = [
    "ALGORITHMS",
    "A2CConfig",
    "OnPolicyConfig",
    "PPOConfig",
    "REINFORCEConfig",
    "TRPOConfig",
    "TrainOutput",
    "a2c",
    "common",
    "get",
    "ppo",
    "reinforce",
    "trpo",
]
