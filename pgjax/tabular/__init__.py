"""Exact tabular reinforcement learning: MDPs, softmax policies, values, occupancies and gradients."""

from pgjax.tabular.control import OptimalSolution, optimal_return, policy_iteration
from pgjax.tabular.evaluation import (
    action_values,
    bellman_matrix,
    check_policy,
    check_policy_table,
    expected_return,
    finite_horizon_return,
    policy_evaluation,
    policy_reward,
    policy_transition,
    state_values,
)
from pgjax.tabular.gradient import advantage_policy_gradient, objective, policy_gradient, values_and_occupancy
from pgjax.tabular.mdp import MDP, chain_mdp, gridworld_mdp, random_mdp, validate_mdp_arrays
from pgjax.tabular.occupancies import (
    FixedPointInfo,
    occupancy,
    occupancy_fixed_point,
    occupancy_iterates,
    occupancy_solve,
    state_action_occupancy,
)
from pgjax.tabular.taxi import TAXI_ACTIONS, taxi_decode, taxi_encode, taxi_mdp
from pgjax.tabular.policy import (
    grad_log_policy,
    log_policy,
    logistic_features,
    logistic_policy,
    policy_logits,
    softmax_policy,
    tabular_features,
    uniform_policy,
)

__all__ = [
    "MDP",
    "FixedPointInfo",
    "OptimalSolution",
    "action_values",
    "bellman_matrix",
    "advantage_policy_gradient",
    "chain_mdp",
    "check_policy",
    "check_policy_table",
    "expected_return",
    "finite_horizon_return",
    "grad_log_policy",
    "gridworld_mdp",
    "log_policy",
    "logistic_features",
    "logistic_policy",
    "objective",
    "occupancy",
    "occupancy_fixed_point",
    "occupancy_iterates",
    "occupancy_solve",
    "optimal_return",
    "policy_evaluation",
    "policy_gradient",
    "policy_iteration",
    "policy_logits",
    "policy_reward",
    "policy_transition",
    "random_mdp",
    "softmax_policy",
    "state_action_occupancy",
    "state_values",
    "tabular_features",
    "taxi_decode",
    "taxi_encode",
    "taxi_mdp",
    "TAXI_ACTIONS",
    "uniform_policy",
    "validate_mdp_arrays",
    "values_and_occupancy",
]
