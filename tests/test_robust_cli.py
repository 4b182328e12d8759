"""Issue 19, the command line and analyses half: each defect reproduced, then refused or fixed.

Defects 9 (checked after the work), 10 (raw tracebacks: CLI and config), 11 (--recipe
os:system), 12 (settling n_pairs), 13 (misleading output). Small seeded traces written with
the public TraceWriter; every command goes through ``cli.main`` like a user's shell.
"""

import os
from pathlib import Path

import numpy as np
import pytest

import geomtrace as gt
from analyses import pair_trajectories, settling_with_interval
from cli import main


def _run(path, tasks, steps=(0, 10, 20, 30), nan_from=None, iso=None, seed=0):
    """A one-group trace of random gradients; snapshots at ``nan_from`` and later are NaN."""
    rng = np.random.default_rng(seed)
    with gt.TraceWriter(path, tasks, [("body", 16, ["w"])], iso_codes=iso) as w:
        for step in steps:
            g = rng.normal(size=(len(tasks), 16)) + 2.0  # a shared component: cos ~ 0.8
            gram = g @ g.T
            if nan_from is not None and step >= nan_from:
                gram = np.full_like(gram, np.nan)
            w.write_snapshot(step, gram[None], {t: 1.0 for t in tasks})
    return path


def _error(capsys, argv) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("geomtrace: error:"), err
    return err


# -- defect 12: settling tables count real pairs -------------------------------------------


def test_settling_counts_the_pairs_of_the_run_not_a_cartesian_product(tmp_path):
    for k in (3, 8):
        tasks = [f"t{i}" for i in range(k)]
        trace = gt.open_trace(_run(tmp_path / f"k{k}", tasks))
        frame = settling_with_interval(pair_trajectories(trace, "all"), kinds=False, n_bootstrap=20)
        assert int(frame["n_pairs"].iloc[0]) == k * (k - 1) // 2  # 3 and 28, not 4 and 49


# -- defect 13: misleading output --------------------------------------------------------


def test_a_diverged_run_has_no_final_value_and_no_settle_step(tmp_path, capsys):
    from analyses import settling_step

    assert settling_step([0, 10, 20, 30], [0.9, 0.93, np.nan, np.nan]) == (
        None,
        pytest.approx(np.nan, nan_ok=True),
    )
    # a NaN in the middle (a task absent once) is skipped, not a divergence
    assert settling_step([0, 10, 20, 30], [0.5, np.nan, 0.9, 0.9])[0] == 20
    run = _run(tmp_path / "diverged", ["a", "b", "c", "d"], nan_from=20)
    assert main(["analyze", str(run), "--permutations", "19", "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    settling = out[out.index("== settling") :].splitlines()[2]
    assert "+0.9" not in settling and "not finite" in settling, settling


def test_group_on_an_all_zero_trace_says_there_is_nothing_to_group(tmp_path, capsys):
    tasks = ["a", "b", "c"]
    with gt.TraceWriter(tmp_path, tasks, [("body", 4, ["w"])]) as w:
        for step in (0, 10, 20):
            w.write_snapshot(step, np.zeros((1, 3, 3)), None)
    err = _error(capsys, ["group", str(tmp_path), "--k", "2"])
    assert "nothing to group" in err and "between 1 and 0" not in err


def test_every_0_is_refused_as_every_not_as_a_window(capsys):
    err = _error(capsys, ["trace", "--every", "0"])
    assert "every=0: must be >= 1" in err and "window" not in err


def test_one_unknown_iso_code_leaves_that_task_out_of_typology_only(tmp_path, capsys):
    codes = {"es": "spa", "fr": "fra", "de": "deu", "ru": "rus", "xx": "qqq"}
    run = _run(tmp_path / "iso", list(codes), iso=codes)
    assert main(["analyze", str(run), "--permutations", "19", "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "xx ('qqq'); left out of the typology" in out and "== typology" in out
    assert main(["group", str(run), "--k", "2", "--bootstrap", "5"]) == 0
    assert "xx ('qqq')" in capsys.readouterr().out


def test_group_on_a_one_task_run_is_the_one_group(tmp_path, capsys):
    run = _run(tmp_path / "one", ["es"])
    assert main(["group", str(run), "--k", "1", "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    assert "1 group by cosine" in out and "group 1: es" in out
    err = _error(capsys, ["group", str(run), "--k", "2"])
    assert "between 1 and 1" in err


# -- defect 9: checked before the work, not after ----------------------------------------


def test_output_paths_and_options_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the arguments were checked")

    monkeypatch.setattr("analyses.analyse_run", no_work)
    monkeypatch.setattr("analyses.analyse_runs", no_work)
    monkeypatch.setattr("reproduce._grouping._schedule", no_work)
    run = _run(tmp_path / "run", ["a", "b", "c"])
    missing = tmp_path / "missing" / "d"
    cases = [
        (["analyze", str(run), "--json", str(missing / "x.json")], "does not exist"),
        (["report", str(run), "--out", str(missing / "r.html")], "does not exist"),
        (["plot", str(run), "--out", "/proc/p"], "cannot create or write"),
        (["reproduce", "--out", "/proc/r"], "cannot create or write"),
        (["reproduce", "--out", str(tmp_path / "r"), "--k", "3"], "only with --grouping"),
        (["reproduce", "--out", str(tmp_path / "g"), "--grouping", "--quick", "--k", "100"],
         "give k between 1 and 8"),
    ]  # fmt: skip
    for argv, message in cases:
        err = _error(capsys, argv)
        assert message in err, (argv, err)
    assert not missing.parent.exists()  # no folder created for an output file


def test_a_json_file_that_cannot_be_written_is_a_storage_error(tmp_path, capsys):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    run = _run(tmp_path / "run", ["a", "b", "c"])
    argv = ["analyze", str(run), "--json", "/dev/full", "--permutations", "19", "--bootstrap", "20"]
    err = _error(capsys, argv)
    assert "cannot write --json '/dev/full'" in err and "No space left" in err


# -- defect 11: a recipe is resolved and checked before it is called --------------------

USER_MODULE = """
import os
from pathlib import Path
from geomtrace.recipe import RecipeConfig

MARK = Path(__file__).with_name("called")

def wrong_parameter(path: str):
    MARK.write_text("wrong_parameter")

def wrong_return(config: RecipeConfig) -> int:
    MARK.write_text("wrong_return")

def two_arguments(config, other):
    MARK.write_text("two_arguments")

class NotAFunction:
    def __init__(self, config):
        MARK.write_text("NotAFunction")
"""


def test_a_recipe_that_is_not_a_recipe_function_is_refused_before_it_is_called(
    tmp_path, capfd, monkeypatch
):
    (tmp_path / "user_recipes.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = [
        ("os:system", "standard library"),
        ("builtins:print", "built-in"),
        ("shutil:rmtree", "standard library"),
        ("user_recipes:wrong_parameter", "annotated"),
        ("user_recipes:wrong_return", "returns"),
        ("user_recipes:two_arguments", "not a recipe function"),
        ("user_recipes:NotAFunction", "not a function"),
    ]
    for spec, message in cases:
        argv = ["trace", "--recipe", spec, "--runs-dir", str(tmp_path / "runs"), "--steps", "1"]
        assert main(argv) == 2, spec
        captured = capfd.readouterr()
        assert message in captured.err and "Traceback" not in captured.err, (spec, captured.err)
        assert "sh:" not in captured.out + captured.err and "RecipeConfig(" not in captured.out
    assert not (tmp_path / "called").exists()


# -- defect 10: what is configurable is bounded by what the machine can do ---------------


def test_negative_seeds_are_refused_by_name(tmp_path, capsys):
    run = _run(tmp_path / "run", ["a", "b", "c"])
    for argv in (["analyze", str(run)], ["group", str(run), "--k", "2"],
                 ["report", str(run), "--out", str(tmp_path / "r.html")]):  # fmt: skip
        err = _error(capsys, [*argv, "--seed", "-1"])
        assert "--seed -1" in err and "4294967295" in err, err


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("d_model=1000000000", "memory"),
        ("batch_per_lang=100000000", "memory"),
        ("eval_batch=1000000000", "memory"),
        ("threads=100000", "CPU"),
        ("seed=12345678901234567890", "seed=12345678901234567890"),
    ],
)
def test_config_values_beyond_the_machine_are_refused_before_any_work(
    tmp_path, capsys, setting, message
):
    out = tmp_path / "runs"
    err = _error(capsys, ["trace", "--runs-dir", str(out), "--langs", "es", "--set", setting])
    key = setting.split("=")[0]
    assert message in err and f"{key}=" in err, err
    assert not out.exists()


def test_the_default_and_full_presets_fit_a_machine_like_this_one():
    from geomtrace.recipe import preset
    from geomtrace.recipe.config import memory_estimate

    default = memory_estimate(preset("default"))
    # 0.7M parameters x (4 + 24 task copies) x 4 bytes plus activations: ~0.1 GiB
    assert 2**26 < default < 2**31
    assert memory_estimate(preset("full")) > default


def test_sigterm_stops_after_the_step_like_ctrl_c(tmp_path, monkeypatch):
    import signal

    from geomtrace.recipe import run

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    before = signal.getsignal(signal.SIGTERM)

    def terminate(step, loss):
        if step == 12:
            os.kill(os.getpid(), signal.SIGTERM)

    config = {"recipe": "examples.multi_head_regression:make_recipe", "steps": 30, "every": 10,
              "out": str(tmp_path), "name": "t", "snapshot_rows": 8}  # fmt: skip
    run_dir = run(config, on_step=terminate)
    trace = gt.open_trace(run_dir)
    assert trace.steps.tolist() == [0, 10] and trace.meta("interrupted_at_step") == 13
    assert (run_dir / "model.safetensors").exists()  # the model is kept
    assert not (run_dir / "trace.sqlite-wal").exists()  # the trace was closed cleanly
    assert signal.getsignal(signal.SIGTERM) is before
