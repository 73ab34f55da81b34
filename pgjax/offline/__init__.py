"""Offline policy evaluation and offline policy gradients from logged data."""

from pgjax.offline.dataset import (
    SCHEMA,
    Dataset,
    DatasetError,
    Transitions,
    check_tabular_policy,
    collect,
    concatenate,
    load_dataset,
    read_dataset_metadata,
    sample_dataset,
    save_dataset,
    subset,
    valid_transitions,
    validate_dataset,
    validate_tabular_dataset,
)
from pgjax.offline.dualdice import dualdice_objective, dualdice_ratio, dualdice_tabular, ratio_from_occupancy
from pgjax.offline.empirical import (
    Coverage,
    CoverageError,
    CoverageWarning,
    EmpiricalModel,
    EmpiricalSolution,
    coverage,
    data_distribution,
    empirical_mdp,
    empirical_model,
    empirical_occupancy,
    extend_policy,
    pessimistic_value,
    report_coverage,
    solve_empirical,
)
from pgjax.offline.evaluation import METHODS, model_value, policy_value, ratio_weighted_value, tabular_importance_value
from pgjax.offline.exact import exact_ratio, logged_distribution
from pgjax.offline.gradient import (
    ImprovementResult,
    dualdice_policy_gradient,
    expected_offline_gradient,
    importance_policy_gradient,
    model_policy_gradient,
    offline_policy_gradient,
    offline_policy_improvement,
    tabular_fqe,
)
from pgjax.trajectory import safe_log
from pgjax.offline.importance import (
    IS_METHODS,
    cumulative_log_ratios,
    effective_sample_size,
    importance_value,
    importance_weights,
    log_ratios,
)
from pgjax.offline.collect_env import collect_env
from pgjax.offline.neural import (
    DualDICEParams,
    FQEConfig,
    FQEParams,
    NeuralDualDICEConfig,
    TrainingDivergedError,
    discounted_reward_to_go,
    dualdice_loss,
    fitted_q_evaluation,
    fqe_loss,
    fqe_q_values,
    fqe_value,
    neural_dualdice,
    neural_dualdice_ratio,
    neural_dualdice_value,
    offline_policy_gradient_loss,
    on_policy_gradient_loss,
    one_hot_observations,
    tabular_probs_fn,
)
from pgjax.offline.doubly_robust import doubly_robust_value, neural_doubly_robust_value
