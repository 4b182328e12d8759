"""A run directory belongs to one run: locking, unique names, atomic files, bad input refused
before any work, a full disk and a diverged run. Real subprocesses, threads, files and mounts."""

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import tomllib

import numpy as np
import pytest

from cli import main
from geomtrace import InvalidInputError, StorageError, open_trace
from geomtrace.recipe import RecipeConfig, run
from geomtrace.recipe.runner import run_directory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
ROOT = os.geteuid() == 0

SLOW_RECIPE = textwrap.dedent(
    """
    import os, time, torch
    from geomtrace.recipe import Recipe

    def make(config):
        width = int(os.environ.get("RECIPE_WIDTH", "4"))
        model = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Linear(width, 1))
        targets = {"a": 1.0, "b": -1.0}
        pause = float(os.environ.get("RECIPE_SLEEP", "0"))

        def sample(step, gen):
            time.sleep(pause)
            return {t: torch.randn(5, 3, generator=gen) for t in targets}

        def loss(model, task, x):
            return ((model(x) - targets[task]) ** 2).mean()

        return Recipe(model, list(targets), sample, loss)

    def not_a_recipe(config):
        return 42
    """
)


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch):
    (tmp_path / "slow_recipe.py").write_text(SLOW_RECIPE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _cli(recipe_dir, out, *args, sleep=0.0):
    """``geomtrace trace`` with the slow recipe, as a real process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([REPO, str(recipe_dir)]),
        "RECIPE_SLEEP": str(sleep),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())", "trace",
           "--recipe", "slow_recipe:make", "--out", str(out), *args]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _wait_for(path, proc, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _config_seed(run_dir):
    with open(run_dir / "config.toml", "rb") as f:
        return tomllib.load(f)["seed"]


def test_two_runs_started_together_on_one_name_leave_one_consistent_directory(recipe_dir):
    out = recipe_dir / "runs"
    procs = [
        _cli(recipe_dir, out, "--name", "same", "--seed", str(seed), "--steps", "30", sleep=0.05)
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=300), p.communicate()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser_err = next(err for rc, (_, err) in results if rc == 2)
    assert "geomtrace: error:" in loser_err and "Traceback" not in loser_err
    assert "in use by another run (pid" in loser_err or "already exists" in loser_err
    winner = (1, 2)[[rc for rc, _ in results].index(0)]
    run_dir = out / "same"
    # config, trace and model all from the winner
    assert _config_seed(run_dir) == winner == open_trace(run_dir).config["seed"]
    assert (run_dir / "model.safetensors").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.toml", "model.safetensors", "trace.sqlite",
    ]  # fmt: skip


def test_force_refuses_while_the_owner_is_alive(recipe_dir):
    out = recipe_dir / "runs"
    owner = _cli(recipe_dir, out, "--name", "r", "--seed", "5", "--steps", "60", sleep=0.1)
    _wait_for(out / "r" / "trace.sqlite", owner)
    with pytest.raises(InvalidInputError, match=rf"'{out / 'r'}' is in use by another run "
                       rf"\(pid {owner.pid}\)"):  # fmt: skip
        run({"recipe": "slow_recipe:make", "out": str(out), "name": "r", "steps": 2}, force=True)
    assert owner.wait(timeout=300) == 0, owner.communicate()
    trace = open_trace(out / "r")
    assert trace.config["seed"] == 5 and trace.steps[-1] == 60  # the owner's run, whole


def test_two_threads_on_one_name(recipe_dir, monkeypatch):
    monkeypatch.setenv("RECIPE_SLEEP", "0.02")
    out = recipe_dir / "runs"
    outcomes = []

    def one(seed):
        try:
            run({"recipe": "slow_recipe:make", "out": str(out), "name": "t", "steps": 20,
                 "seed": seed, "langs": []})  # fmt: skip
            outcomes.append(("ok", seed))
        except InvalidInputError as err:
            outcomes.append(("refused", str(err)))

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(kind for kind, _ in outcomes) == ["ok", "refused"], outcomes
    winner = next(seed for kind, seed in outcomes if kind == "ok")
    assert _config_seed(out / "t") == winner == open_trace(out / "t").config["seed"]


def test_default_names_are_unique_within_one_second():
    config = RecipeConfig()
    names = [run_directory(config).name for _ in range(3)]
    assert len(set(names)) == 3
    assert len({n.rsplit("-", 1)[0] for n in names}) <= 2  # same timestamp prefix (or a tick)


def test_three_default_launches_get_three_directories(recipe_dir):
    out = recipe_dir / "runs"
    config = {"recipe": "slow_recipe:make", "out": str(out), "steps": 1, "every": 1, "langs": []}
    dirs = {run(config) for _ in range(3)}  # about a second for all three
    assert len(dirs) == 3 and sorted(p.name for p in out.iterdir()) == sorted(d.name for d in dirs)


def test_not_a_recipe_leaves_no_run_directory(recipe_dir):
    out = recipe_dir / "runs"
    with pytest.raises(InvalidInputError, match=r"os is part of the Python standard library"):
        run({"recipe": "os:getcwd", "out": str(out), "name": "x"})
    with pytest.raises(InvalidInputError, match=r"returned int, not a geomtrace.recipe.Recipe"):
        run({"recipe": "slow_recipe:not_a_recipe", "out": str(out), "name": "x"})
    assert not (out / "x").exists()


def test_failed_model_save_leaves_no_partial_model(recipe_dir, monkeypatch, capsys):
    import safetensors.torch
    from safetensors import SafetensorError

    def partial(state, filename):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", partial)
    out = recipe_dir / "runs"
    code = main(["trace", "--recipe", "slow_recipe:make", "--out", str(out), "--name", "m",
                 "--steps", "2"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith("geomtrace: error: disk full: cannot write the model to")
    assert "the trace and config.toml" in err and "are complete" in err
    assert sorted(p.name for p in (out / "m").iterdir()) == ["config.toml", "trace.sqlite"]
    assert open_trace(out / "m").steps.tolist() == [0, 2]


def test_failed_config_write_keeps_the_old_file(tmp_path, monkeypatch):
    from geomtrace.recipe import runner

    target = tmp_path / "config.toml"
    target.write_text("old = 1\n")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner.os, "replace", boom)
    with pytest.raises(StorageError, match="disk full: cannot write"):
        runner._write_atomic(target, b"new = 2\n")
    assert target.read_text() == "old = 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temp file left


def test_disk_full_while_tracing_exits_2_naming_what_was_kept(recipe_dir, monkeypatch, capsys):
    from geomtrace import TraceWriter

    real = TraceWriter.write_snapshot
    monkeypatch.setattr(TraceWriter, "write_snapshot", _fail_inside_write(real))
    out = recipe_dir / "runs"
    code = main(["trace", "--recipe", "slow_recipe:make", "--out", str(out), "--name", "f",
                 "--steps", "10", "--every", "2"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2, err
    assert "disk full: cannot write the snapshot of step 4" in err
    assert "snapshots up to step 2 (2 snapshots) are in the trace" in err
    assert open_trace(out / "f").steps.tolist() == [0, 2]


def _fail_inside_write(real):
    """``write_snapshot`` whose third transaction fails as SQLite does on a full disk."""
    import sqlite3

    def write_snapshot(self, step, *args, **kwargs):
        if len(self.steps_written) < 2:
            return real(self, step, *args, **kwargs)

        def full(c):
            raise sqlite3.OperationalError("database or disk is full")

        self._write(f"the snapshot of step {step}", full)

    return write_snapshot


@contextlib.contextmanager
def _mounted(kind, source=None, size="2m"):
    if not ROOT or shutil.which("mount") is None:
        pytest.skip("mounting needs root and mount(8) (a container without them)")
    import tempfile

    target = tempfile.mkdtemp(prefix="geomtrace-mnt-")
    if kind == "tmpfs":
        cmds = [["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", target]]
    else:
        cmds = [
            ["mount", "--bind", str(source), target],
            ["mount", "-o", "remount,ro,bind", target],
        ]
    for i, cmd in enumerate(cmds):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            if i:
                subprocess.run(["umount", target])
            os.rmdir(target)
            pytest.skip(f"cannot mount here ({done.stderr.strip()})")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", target], check=True)
        os.rmdir(target)


def test_model_too_big_for_a_real_small_tmpfs(recipe_dir, monkeypatch, capsys):
    monkeypatch.setenv("RECIPE_WIDTH", "200000")  # 800k weights: 3.2 MB of model, a tiny trace
    with _mounted("tmpfs", size="2m") as mnt:
        code = main(["trace", "--recipe", "slow_recipe:make", "--out", mnt, "--name", "big",
                     "--steps", "1", "--groups", "whole_model"])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2, err
        assert "disk full: cannot write the model to" in err and mnt in err
        names = sorted(os.listdir(os.path.join(mnt, "big")))
        assert names == ["config.toml", "trace.sqlite"]
        trace = open_trace(os.path.join(mnt, "big"))
        assert trace.steps.tolist() == [0, 1]
        trace.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "banana"], r"device='banana'; allowed: cpu, cuda, cuda:N"),
        (["--set", "lr=abc"], r"config lr='abc': expected a number, got str"),
        (["--set", "lr=-1"], r"lr=-1.0: must be > 0"),
        (["--set", "dropout=2"], r"dropout=2.0: must be in \[0, 1\)"),
        (["--set", "eval_batch=0"], r"eval_batch=0: must be >= 1"),
        (["--beta", "nan"], r"beta=nan: must be a finite number in \(0, 1\]"),
        (["--set", "steps=1.5"], r"config steps=1.5: expected an integer, got float"),
        (["--set", "langs=3"], r"config langs=3: expected a list of strings"),
        (["--name", "../x"], r"name='../x' leads to .* outside --out"),
        (["--name", "/tmp/abs"], r"name='/tmp/abs' is an absolute path"),
        (["--recipe", "os:getcwd"], r"os is part of the Python standard library"),
    ],
)  # fmt: skip
def test_bad_trace_input_exits_2_before_any_work(tmp_path, capsys, args, message):
    import re

    out = tmp_path / "runs"
    argv = ["trace", "--out", str(out), *args]
    if "--recipe" not in args and "langs=3" not in " ".join(args):
        argv += ["--langs", "es"]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not out.exists() or not any(out.iterdir())


def test_cuda_without_cuda_is_refused(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    assert main(["trace", "--out", str(tmp_path), "--device", "cuda"]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err


def test_out_that_is_a_file_or_read_only_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["trace", "--out", str(tmp_path / "file" / "runs")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    with _mounted("ro-bind", tmp_path) as ro:
        assert main(["trace", "--out", os.path.join(ro, "runs")]) == 2
        assert "is a read-only file system" in capsys.readouterr().err


def test_name_may_be_a_subdirectory_of_out(tmp_path):
    RecipeConfig(name="group/a", out=str(tmp_path)).validate()


@pytest.mark.slow
def test_diverged_run_finishes_and_saves_trace_config_and_model(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    run_dir = run(
        {
            "langs": ["es", "fr", "de"],
            "steps": 10,
            "every": 5,
            "lr": 1e12,
            "clip_norm": 0.0,
            "d_model": 32,
            "nhead": 4,
            "d_ff": 64,
            "batch_per_lang": 4,
            "max_bytes": 24,
            "out": str(tmp_path),
            "name": "d",
        }  # fmt: skip
    )
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.toml", "model.safetensors", "trace.sqlite",
    ]  # fmt: skip
    assert any("training diverged" in r.getMessage() for r in caplog.records)
    trace = open_trace(run_dir)
    losses = trace.losses()
    assert np.isnan(losses[losses.step == 10].loss).all()  # recorded, not dropped
    assert len(losses[losses.step == 10]) == 3
    quality = trace.quality()
    assert set(quality.task) == {"es", "fr", "de"}
