"""End-to-end runs of the recipe (tiny model, few languages, real corpus and training)."""

import os
import signal
import textwrap

import numpy as np
import pytest
import torch

from cli import main
from geomtrace import InvalidInputError, open_trace
from geomtrace.recipe import RecipeConfig, load_model, run

TINY = {
    "langs": ["es", "ru", "ja"],
    "steps": 20,
    "every": 10,
    "d_model": 32,
    "nhead": 4,
    "d_ff": 64,
    "batch_per_lang": 4,
    "max_bytes": 24,
    "threads": 1,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run(TINY | {"out": str(out), "name": "a"}), out


@pytest.mark.slow
def test_run_writes_trace_quality_and_baseline(tiny_run):
    run_dir, _ = tiny_run
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("trace.sqlite-")) == [
        "config.toml", "model.safetensors", "trace.sqlite",
    ]  # fmt: skip
    trace = open_trace(run_dir)
    assert trace.tasks == ["es", "ru", "ja"]
    assert trace.iso_codes == {"es": "spa", "ru": "rus", "ja": "jpn"}
    assert trace.steps.tolist() == [0, 10, 20]  # step 0: the untrained baseline
    assert trace.groups[:2] == ["embed", "pos"] and "encoder.layers.0" in trace.groups
    q = trace.quality()
    assert set(q.step) == {20}
    assert set(zip(q.task, q.metric, strict=True)) == {
        (t, m) for t in ("es", "ru", "ja") for m in ("chrf", "heldout_loss")
    }
    assert ((q.value >= 0) & (q.value <= 100)).all()
    # each language's chrF with its bootstrap interval over the test strings (trace meta)
    intervals = trace.meta("chrf_intervals")
    chrf = q[q.metric == "chrf"].set_index("task").value
    counts = trace.meta("corpus_counts")
    for task in ("es", "ru", "ja"):
        iv = intervals[task]
        assert iv["low"] <= chrf[task] <= iv["high"]  # (a tiny model may score 0 everywhere)
        assert iv["chrf"] == pytest.approx(chrf[task])
        assert iv["n"] == counts[task]["test"]
        by_domain = trace.meta("corpus_domain_counts")[task]
        # the default: every text domain; each string counted once, in one domain
        assert {"django", "jupyterlab"} <= set(by_domain)
        assert sum(d["test"] for d in by_domain.values()) == counts[task]["test"]
        assert sum(d["train"] for d in by_domain.values()) == counts[task]["train"]
    losses = trace.losses()
    first = losses[losses.step == 0].set_index("task").loss
    last = losses[losses.step == 20].set_index("task").loss
    assert (last < first).all()  # it learns
    assert np.log(259 + 3) - 0.5 < first.mean() < np.log(259 + 3) + 1.5  # ~uniform at step 0
    cos = trace.cosine("encoder.layers.0")
    assert cos.shape == (3, 3, 3)
    np.testing.assert_allclose(np.diagonal(cos, axis1=1, axis2=2), 1.0, rtol=1e-5)
    assert trace.meta("direction") == "x2en" and trace.meta("method") == "sum"
    assert trace.meta("granularity") == "all_layer"
    assert trace.meta("scripts") == {"es": "Latn", "ru": "Cyrl", "ja": "Jpan"}
    profiles = trace.meta("char_profiles")
    assert "ж" in profiles["ru"] and "の" in profiles["ja"] and "ñ" in profiles["es"]
    assert trace.config == RecipeConfig.from_toml(run_dir / "config.toml").to_dict()
    assert trace.config["langs"] == ["es", "ru", "ja"]
    from analyses import analyse_run

    text = analyse_run(run_dir, parts=["similarity", "quality"], n_permutations=99).summary_text()
    assert "chrf: mean" in text and "ja" in text


@pytest.mark.slow
def test_same_seed_same_trace_and_checkpoint(tiny_run):
    run_dir, out = tiny_run
    again = run(TINY | {"out": str(out), "name": "b"})
    a, b = open_trace(run_dir), open_trace(again)
    for group in a.groups:
        assert np.array_equal(a.gram(group), b.gram(group))
    assert a.quality().equals(b.quality())
    model = load_model(again)
    ref = load_model(run_dir)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.slow
def test_existing_run_directory_needs_force(tiny_run, capsys):
    _, out = tiny_run
    with pytest.raises(InvalidInputError, match="already exists; pass --force"):
        run(TINY | {"out": str(out), "name": "a"})
    args = ["trace", "--out", str(out), "--name", "a", "--langs", "es", "ru", "--steps", "2",
            "--set", "d_model=32", "--set", "d_ff=64", "--max-bytes", "24"]  # fmt: skip
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    printed = capsys.readouterr().out
    assert "chrf: mean" in printed and "mean similarity (all, raw, steps > 0)" in printed
    assert open_trace(out / "a").tasks == ["es", "ru"]


def test_unknown_language_lists_available(tmp_path, capsys):
    assert main(["trace", "--langs", "es", "klingon", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown language 'klingon'" in err and "zh_Hans" in err and "pt_BR" in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_gradvac_en2x_run(tmp_path):
    config = TINY | {"steps": 4, "every": 2, "method": "gradvac", "granularity": "enc_dec",
                     "direction": "en2x", "out": str(tmp_path), "name": "g"}  # fmt: skip
    trace = open_trace(run(config))
    assert trace.groups == ["rest", "encoder", "decoder"]
    assert trace.steps.tolist() == [0, 2, 4]
    assert trace.array("weights").shape == (3, 3, 3)
    assert trace.meta("method") == "gradvac" and trace.meta("granularity") == "enc_dec"
    assert trace.meta("direction") == "en2x"
    assert set(trace.quality().metric) == {"chrf", "heldout_loss"}


@pytest.mark.slow
def test_probe_mode(tmp_path):
    trace = open_trace(run(TINY | {"steps": 2, "every": 1, "probe": True, "probe_size": 4,
                                   "out": str(tmp_path), "name": "p"}))  # fmt: skip
    assert set(trace.sources) == {"probe"}
    assert trace.steps.tolist() == [0, 1, 2]


@pytest.mark.slow
def test_ctrl_c_stops_after_the_step_with_a_valid_trace(tmp_path):
    def interrupt(step, loss):
        if step == 12:
            os.kill(os.getpid(), signal.SIGINT)

    # The handler the run found (the default one, or SIG_IGN under nohup) is put back after.
    before = signal.getsignal(signal.SIGINT)
    run_dir = run(TINY | {"out": str(tmp_path), "name": "i"}, on_step=interrupt)
    trace = open_trace(run_dir)
    assert trace.steps.tolist() == [0, 10]
    assert trace.meta("interrupted_at_step") == 13
    assert set(trace.quality().step) == {13}
    assert signal.getsignal(signal.SIGINT) is before


def test_user_recipe(tmp_path, monkeypatch):
    module = tmp_path / "my_recipe.py"
    module.write_text(
        textwrap.dedent(
            """
            import torch
            from geomtrace.recipe import Recipe

            def make(config):
                model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
                targets = {"a": 1.0, "b": -1.0}

                def sample(step, gen):
                    return {t: torch.randn(5, 3, generator=gen) for t in targets}

                def loss(model, task, x):
                    return ((model(x) - targets[task]) ** 2).mean()

                def evaluate(model):
                    x = torch.ones(2, 3)
                    return {t: {"mse": float(loss(model, t, x))} for t in targets}

                return Recipe(model, list(targets), sample, loss, evaluate=evaluate)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = run({"recipe": "my_recipe:make", "steps": 6, "every": 3, "out": str(tmp_path),
                   "name": "u", "langs": []})  # fmt: skip
    trace = open_trace(run_dir)
    assert trace.tasks == ["a", "b"] and trace.steps.tolist() == [0, 3, 6]
    assert trace.groups == ["0", "1"]
    assert set(trace.quality().metric) == {"mse"}
    # opposite targets: the two tasks' gradients on the output bias point opposite ways at step 0
    assert trace.cosine("1")[0, 0, 1] < 0
    with pytest.raises(InvalidInputError, match="has no function 'nope'"):
        run({"recipe": "my_recipe:nope", "out": str(tmp_path), "name": "v"})


@pytest.mark.slow
def test_full_preset_runs_on_cpu_at_small_size(tmp_path):
    # The GPU preset's code path (every domain, 128-byte strings, 6 + 6 layers, its snapshot
    # design) at a size a CPU test affords: three of its languages outside the default's
    # (Greek, Uyghur in Arabic script, Traditional Chinese), a narrow model, two steps, on the
    # CPU. All 34 languages took 3 CPU minutes here, most of it decoding ~8,500 test strings.
    from geomtrace.recipe import preset

    values = preset("full").to_dict() | {
        "langs": ["el", "ug", "zh_Hant"], "device": "cpu", "threads": 1, "d_model": 16,
        "nhead": 2, "d_ff": 32, "steps": 2, "every": 1, "batch_per_lang": 2,
        "snapshot_rows": 4, "warmup": 1, "out": str(tmp_path), "name": "full-cpu",
    }  # fmt: skip
    trace = open_trace(run(values))
    assert list(trace.tasks) == ["el", "ug", "zh_Hant"] and list(trace.steps) == [0, 1, 2]
    assert trace.has_halves and trace.config["max_bytes"] == 128
    assert trace.config["enc_layers"] == trace.config["dec_layers"] == 6
    quality = trace.quality()
    assert set(quality["task"]) == set(trace.tasks)
    assert np.isfinite(quality["value"]).all()
