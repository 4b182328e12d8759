import numpy as np
import pandas as pd
import pytest

from analyses import CORRELATION_COLUMNS, typological_distance, typology_correlation
from geomtrace import InvalidInputError

LANGS = ["spa", "por", "fra", "deu", "fin", "est", "hun", "tur", "aze", "uzb", "tam", "tel"]
TASKS = [f"{c}-en" for c in LANGS]
ISO = dict(zip(TASKS, LANGS, strict=True))


def sym(m):
    m = (m + m.T) / 2
    np.fill_diagonal(m, 0.0)
    return m


@pytest.fixture(scope="module")
def genetic():
    return typological_distance(LANGS, "genetic").to_numpy()


def stack_of(*matrices):
    out = np.stack([m.copy() for m in matrices])
    for m in out:
        np.fill_diagonal(m, 1.0)
    return out


def test_confound_at_step0_and_a_real_effect_after_control(genetic):
    rng = np.random.default_rng(0)
    K = len(LANGS)
    char = sym(rng.uniform(size=(K, K)))  # covariate unrelated to typology
    step0 = sym(-char + 0.05 * rng.normal(size=(K, K)))
    trained = sym(-char - 1.0 * genetic + 0.05 * rng.normal(size=(K, K)))
    source = stack_of(step0, trained, trained)
    cov = {"char_overlap": pd.DataFrame(char, index=TASKS, columns=TASKS)}
    frame = typology_correlation(
        source, tasks=TASKS, steps=[0, 10, 20], iso_codes=ISO, distances=["genetic"],
        covariates=cov, n_permutations=999, test="mantel",
    )  # fmt: skip
    assert list(frame.columns) == CORRELATION_COLUMNS
    rows = frame.set_index("distance")
    g, c = rows.loc["genetic"], rows.loc["char_overlap"]
    assert (
        c["rho_step0"] > 0.9 and c["p_value_step0"] < 0.01
    )  # the trap: untrained already tracks bytes
    assert g["control"] == "char_overlap" and g["n_languages"] == 12
    assert g["rho"] > 0.3 and g["p_value"] < 0.01
    assert g["partial_rho"] > 0.5 and g["partial_p_value"] < 0.01
    assert abs(g["partial_rho_step0"]) < 0.3 and g["partial_p_value_step0"] > 0.05
    assert np.isnan(c["partial_rho"])  # no other control for the covariate itself
    assert "no control distance" in c["note"]


def test_partial_control_removes_a_confounded_typology_effect(genetic):
    rng = np.random.default_rng(1)
    K = len(LANGS)
    char = sym(genetic + 0.2 * rng.normal(size=(K, K)))  # characters follow families
    trained = sym(-char + 0.05 * rng.normal(size=(K, K)))  # gradients follow characters only
    source = stack_of(trained, trained)
    cov = {"char_overlap": pd.DataFrame(char, index=TASKS, columns=TASKS)}
    g = typology_correlation(
        source, tasks=TASKS, steps=[0, 10], iso_codes=ISO, distances="genetic", covariates=cov,
        n_permutations=999, test="mantel",
    ).set_index("distance").loc["genetic"]  # fmt: skip
    assert g["rho"] > 0.4 and g["p_value"] < 0.01
    assert abs(g["partial_rho"]) < 0.2 and g["partial_p_value"] > 0.05


def test_exclusions_and_errors(genetic):
    rng = np.random.default_rng(2)
    K = len(LANGS)
    trained = sym(-genetic + 0.1 * rng.normal(size=(K, K)))
    trained[0, 1] = trained[1, 0] = np.nan  # spa-por never measured
    source = stack_of(trained, trained)
    iso = dict(ISO, **{"tel-en": None})
    frame = typology_correlation(
        source, tasks=TASKS, steps=[0, 10], iso_codes=iso, distances=["genetic", "syntactic"],
        covariates=None, n_permutations=99, seed=3,
    )  # fmt: skip
    assert list(frame["distance"]) == ["genetic", "syntactic"]
    assert (frame["n_languages"] == 10).all()
    assert frame["excluded"].iloc[0] == "tel-en (no ISO code); spa-en (missing similarity)"
    assert frame["control"].isna().all() and frame["partial_rho"].isna().all()
    again = typology_correlation(
        source, tasks=TASKS, steps=[0, 10], iso_codes=iso, distances=["genetic", "syntactic"],
        covariates=None, n_permutations=99, seed=3,
    )  # fmt: skip
    pd.testing.assert_frame_equal(frame, again)
    no_step0 = typology_correlation(
        source[1:], tasks=TASKS, steps=[10], iso_codes=ISO, distances="genetic", covariates=None,
        n_permutations=99,
    )  # fmt: skip
    assert np.isnan(no_step0["rho_step0"]).all() and "no step-0" in no_step0["note"].iloc[0]
    with pytest.raises(InvalidInputError, match="at least 4 languages"):
        typology_correlation(
            source, tasks=TASKS, steps=[0, 10], iso_codes={t: ISO[t] for t in TASKS[2:5]}
        )
    with pytest.raises(InvalidInputError, match="unknown ISO"):
        typology_correlation(
            source, tasks=TASKS, steps=[0, 10], iso_codes=dict(ISO, **{"fin-en": "fi"}),
            n_permutations=9,
        )  # fmt: skip


def test_the_default_test_keeps_geographic_autocorrelation(genetic):
    """The same planted effect under the default spatial design: the statistic is the same
    number, the p-value comes from surrogates that keep the similarity's autocorrelation over
    geography (12 languages whose families are also geographic clusters), the exchangeable
    Mantel p is kept for reference and is the smaller one."""
    rng = np.random.default_rng(0)
    K = len(LANGS)
    char = sym(rng.uniform(size=(K, K)))
    trained = sym(-char - 1.0 * genetic + 0.05 * rng.normal(size=(K, K)))
    np.fill_diagonal(trained, 1.0)
    source = stack_of(trained, trained, trained)
    cov = {"char_overlap": pd.DataFrame(char, index=TASKS, columns=TASKS)}
    kw = dict(tasks=TASKS, steps=[0, 10, 20], iso_codes=ISO, distances=["genetic"],
              covariates=cov, n_permutations=499)  # fmt: skip
    spatial = typology_correlation(source, **kw).set_index("distance").loc["genetic"]
    plain = typology_correlation(source, test="mantel", **kw).set_index("distance").loc["genetic"]
    assert spatial["test"] == "spatial" and plain["test"] == "mantel"
    assert spatial["rho"] == pytest.approx(plain["rho"])
    assert spatial["p_mantel"] == pytest.approx(plain["p_value"])
    assert spatial["p_value"] > spatial["p_mantel"]
    with pytest.raises(InvalidInputError, match="test="):
        typology_correlation(source, test="qap", **kw)
