"""analyses: numbers from geomtrace traces (pandas frames and numpy arrays; no torch, no plots).

Every analysis takes a trace (``geomtrace.open_trace(run)``) or plain arrays plus a task list,
and returns a frame whose columns are documented in its docstring (and listed in the
``*_COLUMNS`` constants). Group ``"all"`` is the whole model: the sum of the groups' Gram
matrices. Default step window: every snapshot after step 0; step 0 (untrained model) is
reported separately as a baseline. Formulas and statistics: ``analyses/README.md``.
"""

from analyses._analyse_run import PARTS, analyse_run, analyse_runs, open_run, run_label
from analyses._clustering import (
    AGREEMENT_COLUMNS,
    ClusterTree,
    adjusted_rand_index,
    cluster_tasks,
    family_agreement,
)
from analyses._compare import (
    Comparison,
    across_seeds,
    baseline_seed_interval,
    compare_runs,
    higher_is_better,
    t_interval,
)
from analyses._covariates import (
    COVARIATES,
    char_overlap_distance,
    covariate_distances,
    script_distance,
    task_covariates,
)
from analyses._design import design, design_text
from analyses._evolution import (
    FAMILY_GROUP_COLUMNS,
    FAMILY_TRAJECTORY_COLUMNS,
    GROUP_TRAJECTORY_COLUMNS,
    PAIR_SPREAD_COLUMNS,
    PAIR_TRAJECTORY_COLUMNS,
    RELIABILITY_TRAJECTORY_COLUMNS,
    SETTLING_COLUMNS,
    family_means_by_group,
    family_trajectories,
    group_trajectories,
    pair_spread,
    pair_trajectories,
    pick_pairs,
    reliability_trajectory,
    settling,
    settling_step,
    settling_with_interval,
)
from analyses._grouping import (
    AFFINITIES,
    Affinity,
    Grouping,
    best_partition,
    exact_partition,
    group_tasks,
    heuristic_partition,
    lookahead_affinity,
    partition_score,
    planted_affinity,
    task_affinity,
)
from analyses._grouping_experiment import (
    GROUPING_DELTA_COLUMNS,
    GROUPING_SCHEME_COLUMNS,
    GROUPING_TASK_COLUMNS,
    GroupingExperiment,
    grouping_experiment,
    latest_quality,
    random_groupings,
)
from analyses._grouping_holdout import HOLDOUT_COLUMNS, grouping_holdout, holdout_lines
from analyses._inputs import ALL, complete_tasks
from analyses._inspect import trace_summary, trace_summary_text
from analyses._mantel import CORRELATION_COLUMNS, typology_correlation
from analyses._measures import MEASURES, Similarity, centred_gram, has_halves, similarity
from analyses._multiplicity import ALPHA, PRIMARY_TESTS
from analyses._optimizers import GRADVAC_TARGET_COLUMNS, gradvac_target_trajectories
from analyses._quality import (
    QUALITY_CORRELATION_COLUMNS,
    QUALITY_DIFFERENCE_COLUMNS,
    quality_correlation,
    quality_difference,
    task_quality,
)
from analyses._results import FRAMES, NotApplicable, RunDescription, RunResults, describe
from analyses._similarity import (
    ALIGNMENT_COLUMNS,
    DIFFERENCE_COLUMNS,
    LOW_RELIABILITY,
    RELIABILITY_COLUMNS,
    SUMMARY_COLUMNS,
    TRAINING_CHANGE_COLUMNS,
    alignment_rows,
    group_difference,
    mean_pair_similarity,
    reliability_table,
    similarity_matrix,
    similarity_summary,
    task_alignment,
    training_change,
)
from analyses._spatial import (
    LEVEL_COLUMNS,
    MoranBasis,
    fitted_proximity,
    language_proximity,
    moran_basis,
    null_covariances,
    proximity,
    proximity_candidates,
    simulate_pair,
    spatial_mantel,
    spatial_null_level,
    spatial_surrogates,
)
from analyses._spatial_correlation import spatial_correlation
from analyses._stats import PermutationResult, mantel, partial_mantel, permutation_correlation
from analyses._text import grouping_text, typology_text
from analyses._typology import (
    DISTANCES,
    MACROLANGUAGE_FALLBACK,
    cache_dir,
    check_languages,
    language_families,
    task_families,
    typological_distance,
    typological_distances,
)
from analyses._uncertainty import benjamini_hochberg, block_bootstrap, holm, interval

__all__ = [
    "ALPHA", "AFFINITIES", "Affinity", "Grouping", "best_partition", "exact_partition", "group_tasks",
    "heuristic_partition", "lookahead_affinity", "partition_score", "planted_affinity",
    "task_affinity", "HOLDOUT_COLUMNS", "grouping_holdout", "holdout_lines",
    "GROUPING_DELTA_COLUMNS", "GROUPING_SCHEME_COLUMNS", "GROUPING_TASK_COLUMNS",
    "GroupingExperiment", "grouping_experiment", "latest_quality", "random_groupings",
    "Comparison", "across_seeds", "baseline_seed_interval", "compare_runs", "higher_is_better", "t_interval",
    "FRAMES", "LOW_RELIABILITY", "MEASURES", "NotApplicable", "RELIABILITY_COLUMNS",
    "RunDescription", "RunResults", "Similarity", "alignment_rows", "analyse_run",
    "benjamini_hochberg",
    "analyse_runs", "block_bootstrap", "centred_gram", "describe", "has_halves", "holm",
    "interval", "mean_pair_similarity", "open_run", "pick_pairs", "reliability_table",
    "run_label", "settling_with_interval", "similarity",
    "AGREEMENT_COLUMNS", "ALIGNMENT_COLUMNS", "ALL", "CORRELATION_COLUMNS", "COVARIATES",
    "DISTANCES", "FAMILY_GROUP_COLUMNS", "FAMILY_TRAJECTORY_COLUMNS", "GRADVAC_TARGET_COLUMNS",
    "GROUP_TRAJECTORY_COLUMNS", "MACROLANGUAGE_FALLBACK", "PAIR_SPREAD_COLUMNS",
    "PAIR_TRAJECTORY_COLUMNS", "PARTS", "PRIMARY_TESTS", "design", "design_text", "DIFFERENCE_COLUMNS", "group_difference", "RELIABILITY_TRAJECTORY_COLUMNS",
    "reliability_trajectory", "QUALITY_CORRELATION_COLUMNS",
    "QUALITY_DIFFERENCE_COLUMNS", "SETTLING_COLUMNS", "SUMMARY_COLUMNS", "ClusterTree",
    "PermutationResult", "adjusted_rand_index", "cache_dir", "char_overlap_distance",
    "check_languages", "cluster_tasks", "complete_tasks", "covariate_distances",
    "family_agreement", "family_means_by_group", "family_trajectories",
    "gradvac_target_trajectories", "group_trajectories", "language_families", "mantel",
    "pair_spread", "pair_trajectories", "partial_mantel", "permutation_correlation",
    "quality_correlation", "quality_difference", "script_distance", "settling", "settling_step",
    "task_covariates", "TRAINING_CHANGE_COLUMNS", "training_change",
    "similarity_matrix", "similarity_summary", "task_alignment", "task_families",
    "task_quality", "typological_distance", "typological_distances", "typology_correlation",
    "LEVEL_COLUMNS", "MoranBasis", "fitted_proximity", "language_proximity", "moran_basis",
    "null_covariances", "proximity", "proximity_candidates", "simulate_pair",
    "spatial_correlation", "spatial_mantel",
    "spatial_null_level", "spatial_surrogates",
    "grouping_text", "trace_summary", "trace_summary_text", "typology_text",
]  # fmt: skip
