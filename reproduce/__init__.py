"""``geomtrace reproduce``: the experiments end to end, above figures/.

The paper-figure reproduction (:func:`reproduce`, ``_paper.py``): train and trace the embedded
recipe once per (optimizer, seed) of the plan (``geomtrace.recipe``), analyse every run once
(``analyses.analyse_runs``: intervals, reliability, the layer x distance table), compare the
optimizers seed by seed (``analyses.compare_runs``) and summarise every statistic across seeds
(``analyses.across_seeds``), draw every figure (``figures``) and write the HTML report and
``results.json``. The grouping experiment (:func:`reproduce_grouping`, ``_grouping.py``): one
model per group of languages against the all-language model. Both train their runs through
``_runs.py`` (a pool of single-threaded workers; finished runs are reused).

It lives beside cli.py, not in figures/, because it trains and analyses: figures only draw.
"""

from ._grouping import GROUPING_HELP, GROUPING_SCHEMES, GroupingResult, reproduce_grouping
from ._paper import (
    DESCRIPTION,
    MODE_PRESETS,
    PLANS,
    PlannedRun,
    ReproduceResult,
    plan_runs,
    reproduce,
    results_payload,
)
from ._runs import ORPHAN_EXIT, finished

__all__ = [
    "DESCRIPTION",
    "GROUPING_HELP",
    "GROUPING_SCHEMES",
    "MODE_PRESETS",
    "ORPHAN_EXIT",
    "PLANS",
    "GroupingResult",
    "PlannedRun",
    "ReproduceResult",
    "finished",
    "plan_runs",
    "reproduce",
    "reproduce_grouping",
    "results_payload",
]
