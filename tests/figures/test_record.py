"""The reproduction's record: figures/README.md quotes its headline numbers from the committed
results.json, verbatim (issue 22: every number quoted can be traced to the record)."""

from __future__ import annotations

import json
from pathlib import Path

from figures import headline_table
from figures._record import END, START, readme_block

ROOT = Path(__file__).resolve().parents[2]


def _results() -> dict:
    layer = {
        "group": "all", "distance": "geographic", "rho": 0.5, "p_value": 0.0004, "p_holm": 0.02,
        "rho_disattenuated": 0.55, "lang_ci_low": 0.1, "lang_ci_high": 0.8,
        "partial_rho": -0.05, "partial_p_value": 0.5, "partial_p_holm": 1.0,
        "partial_disattenuated": float("nan"), "matrix_reliability": 0.9,
    }  # fmt: skip
    run = {
        "tasks": ["a", "b", "c", "d"],
        "results": {
            "similarity": [{"group": "all", "reliability": 0.8123, "mean_cosine": 0.3,
                            "ci_low": 0.2, "ci_high": 0.4, "mean_corrected": 0.7,
                            "corrected_ci_low": 0.6, "corrected_ci_high": 0.75}],
            "task_quality": [{"chrf": 10.0}, {"chrf": 14.0}],
            "layers": [layer],
            "quality": [{"metric": "chrf", "rho": 0.3, "p_value": 0.04, "test": "spatial",
                         "lang_ci_low": -0.2, "lang_ci_high": 0.7, "partial_rho": 0.1,
                         "partial_p_value": 0.6}],
            "clustering": [{"group": "all", "level": "genus", "statistic": "ari", "value": 0.4,
                            "p_value": 0.01, "null_mean": 0.0}],
            # the run's tests table: q for exploratory tests, Holm across the primaries,
            # a layer-table repeat of a typology row takes the typology row's correction
            "tests": [
                {"table": "typology", "test": "all geographic: rho", "role": "exploratory",
                 "q_fdr": 0.03},
                {"table": "layers", "test": "all geographic: rho", "role": "repeat"},
                {"table": "quality", "test": "chrf: rho", "role": "primary", "p_primary": 0.12},
                {"table": "clustering", "test": "all genus ari", "role": "exploratory",
                 "q_fdr": 0.0004},
            ],
        },
    }  # fmt: skip
    return {
        "runs": {"sum-s0": run, "gradvac-all_layer-s0": {}},
        "comparison": {"per_method": [{"method": "GradVac", "mean_delta": 0.2, "ci_low": -1.0,
                                       "ci_high": 1.4, "n_seeds": 2, "n_better": 9,
                                       "n_tasks": 16, "ref_ci_low": -0.5, "ref_ci_high": 0.9,
                                       "ref_p": 0.04, "detectable": 1.1,
                                       "n_baseline_seeds": 3}]},
    }  # fmt: skip


def test_headline_table_by_hand():
    lines = headline_table(_results()).split("\n")
    assert lines[0] == "| statistic | sum-s0 |"  # only the summed-gradient runs
    assert "| whole-model snapshot reliability | 0.81 |" in lines
    assert "| chrF, mean over languages (min-max) | 12.0 (10.0-14.0) |" in lines
    assert "| whole model, geographic: rho (p; Holm; q) | +0.50 (<.001; .020; .030) |" in lines
    assert (
        "| whole model, geographic: noise-removed rho [lang CI] | +0.55 [+0.10, +0.80] |" in lines
    )
    # a missing or undefined value prints as a dash, never as a made-up number
    assert (
        "| whole model, geographic given char. overlap: noise-removed partial [lang CI] | "
        "– [–, –] |"
    ) in lines
    assert "| encoder.layers.0, genetic: rho (p; Holm; q) | – (–; –; –) |" in lines
    assert (
        "| similarity vs chrf: rho (p, test; q) [task CI] | +0.30 (.040, spatial; H .120) "
        "[-0.20, +0.70] |"
        in lines
    )
    assert (
        "| clusters vs genus: ARI (p, labels permuted; q; chance) | +0.40 (.010; <.001; +0.00) |"
        in lines
    )
    assert lines[-1] == (
        "| GradVac | +0.20 [-1.00, +1.40] | [-0.50, +0.90] (.040) | 1.10 | 2 (3) | 9 of 16 |"
    )


def test_readme_quotes_the_committed_record():
    readme = (ROOT / "figures" / "README.md").read_text(encoding="utf-8")
    record = json.loads((ROOT / "figures" / "gallery" / "results.json").read_text())
    block = readme_block(readme)
    assert block, f"figures/README.md has no {START} ... {END} block"
    assert block == headline_table(record).strip()


#: Numbers the claims may quote that are not cells of the record: counts (seeds, languages,
#: groups) up to this size; the calibration harness's rates (analyses/README.md: 10-31% of
#: geographic-only runs show family agreement, the agreement's bootstrap covered 45-85%, the
#: spatial quality test's power was 33% at a planted effect e = 0.3 over 24 languages; the
#: quality partial given script rejected 5.5% and 8.5% of planted nulls and 36% and 71% of
#: planted effects; the training change's language interval covered 96-98%; the label
#: permutation test's power was 54-100% for planted genealogical similarity,
#: benchmarks/quality_control_calibration.py) and the issue's reliability target 0.8, each
#: named where the claim quotes it.
SMALL_COUNT = 24
NOT_FROM_THE_RECORD = {
    "10", "31", "45", "85", "33", ".3", ".8", "5.5", "8.5", "36", "71", "96", "98", "54", "100",
}  # fmt: skip


def _numbers(text: str) -> list[str]:
    """Every number in ``text`` as written, sign and leading zero removed (+0.30 -> .30)."""
    import re

    found = re.findall(r"(?<![\w.])[-+]?\d*\.?\d+", text)
    out = []
    for token in found:
        token = token.lstrip("+-")
        out.append(token[1:] if token.startswith("0.") else token)
    return out


def test_every_number_the_claims_quote_is_in_the_record_table():
    # The claims (figures/README.md, "What the default reproduction supports" up to the
    # comparison with the previous default) quote the headline table, which the test above
    # regenerates from results.json: a number there that is not a cell of the table is stale
    # or unsourced.
    readme = (ROOT / "figures" / "README.md").read_text(encoding="utf-8")
    claims = readme.split("What the default reproduction supports", 1)[1]
    claims = claims.split("### Compared with the previous default", 1)[0]
    cells = set(_numbers(readme_block(readme)))
    unsourced = [
        n for n in _numbers(claims)
        if n not in cells and n not in NOT_FROM_THE_RECORD
        and not (n.isdigit() and int(n) <= SMALL_COUNT)
    ]  # fmt: skip
    assert not unsourced, f"numbers in the claims that the record table does not hold: {unsourced}"
