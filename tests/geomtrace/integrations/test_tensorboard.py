"""TensorBoard scalars and heatmaps, read back from the event files with EventAccumulator."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("tensorboard")

import geomtrace as gt  # noqa: E402
from geomtrace import GradVac, MultiTask  # noqa: E402
from geomtrace.integrations import snapshot_scalars  # noqa: E402
from geomtrace.integrations.tensorboard import TensorBoardSink, export_trace  # noqa: E402

TASKS = ["es", "fr", "ru", "ja"]


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return {e.step: e.value for e in acc.Scalars(tag)}


def off_diagonal_stats(cosine):
    """Per snapshot: mean cosine and conflict rate over the finite off-diagonal pairs."""
    k = cosine.shape[-1]
    pairs = cosine[:, ~np.eye(k, dtype=bool)]
    return np.nanmean(pairs, axis=1), np.nansum(pairs < 0, axis=1) / np.isfinite(pairs).sum(1)


def planted_gram():
    """Two groups from known vectors; task 4 absent (NaN) in group 0."""
    a = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    b = np.array([[1.0, 1.0], [2.0, 2.0], [1.0, 0.0], [0.0, 3.0]])
    gram = np.stack([a @ a.T, b @ b.T])
    gram[0, 3, :] = gram[0, :, 3] = np.nan
    return gram


def test_snapshot_scalars_by_hand():
    targets = np.zeros((2, 4, 4))
    targets[1] = [[0, 0.1, 0.2, 0.3], [0.1, 0, 0.4, 0.5], [0.2, 0.4, 0, 0.6], [0.3, 0.5, 0.6, 0]]
    out = snapshot_scalars(planted_gram(), ["enc", "dec"], targets)
    # enc: cos(1,2) = 0, cos(1,3) = -1, cos(2,3) = 0 (task 4 absent).
    assert math.isclose(out["enc", "mean_cosine"], -1 / 3)
    assert math.isclose(out["enc", "conflict_rate"], 1 / 3)
    # dec: cos(1,2) = 1, cos(3,4) = 0, the four other pairs 1/sqrt2.
    r = 1 / math.sqrt(2)
    assert math.isclose(out["dec", "mean_cosine"], (1 + 4 * r) / 6)
    assert out["dec", "conflict_rate"] == 0.0
    assert math.isclose(out["dec", "gradvac_target_mean"], 0.35)
    assert out["enc", "gradvac_target_mean"] == 0.0


def test_sink_on_a_tracer_writes_scalars_losses_and_heatmaps(tmp_path, tiny_seq2seq, task_batches):
    model = tiny_seq2seq
    tracer = gt.Tracer(model, tasks=TASKS, groups="enc_dec", every=1, out=tmp_path / "run")
    TensorBoardSink(tmp_path / "tb", TASKS, images=["encoder"]).attach(tracer)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        with tracer.step(step) as s:
            for task, (src, tgt) in task_batches.items():
                s.backward(task, model.loss(src, tgt))
        opt.step()
        opt.zero_grad()
    tracer.close()

    trace = gt.open_trace(tmp_path / "run")
    acc = read_events(tmp_path / "tb")
    for group in trace.groups:
        mean, conflict = off_diagonal_stats(trace.cosine(group))
        got_mean = scalars(acc, f"geomtrace/{group}/mean_cosine")
        got_conflict = scalars(acc, f"geomtrace/{group}/conflict_rate")
        assert sorted(got_mean) == [0, 1, 2]
        np.testing.assert_allclose([got_mean[s] for s in range(3)], mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose([got_conflict[s] for s in range(3)], conflict, atol=1e-7)
    losses = trace.losses()
    for task in TASKS:
        expected = losses[losses.task == task].set_index("step").loss
        got = scalars(acc, f"geomtrace/loss/{task}")
        np.testing.assert_allclose([got[s] for s in range(3)], expected.loc[[0, 1, 2]], rtol=1e-6)
    assert "geomtrace/encoder/gradvac_target_mean" not in acc.Tags()["scalars"]
    images = acc.Tags()["images"]
    assert images == ["geomtrace/encoder/cosine"]  # only the group asked for
    shots = acc.Images("geomtrace/encoder/cosine")
    assert [e.step for e in shots] == [0, 1, 2]
    assert shots[0].encoded_image_string.startswith(b"\x89PNG")
    assert shots[0].width > 100 and shots[0].height > 100


def test_sink_on_gradvac_logs_target_means(tmp_path, tiny_seq2seq, task_batches):
    model = tiny_seq2seq
    tracer = gt.Tracer(model, tasks=TASKS, groups="enc_dec", every=1, out=tmp_path / "run")
    sink = TensorBoardSink(tmp_path / "tb", TASKS, images=False).attach(tracer)
    mt = MultiTask(model, TASKS, GradVac(beta=0.5), groups="enc_dec", tracer=tracer)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        with mt.step(step) as s:
            for task, (src, tgt) in task_batches.items():
                s.backward(task, model.loss(src, tgt))
        opt.step()
        opt.zero_grad()
    tracer.close()
    sink.close()

    trace = gt.open_trace(tmp_path / "run")
    targets = trace.array("gradvac_target")  # [S, G, K, K]
    acc = read_events(tmp_path / "tb")
    assert acc.Tags()["images"] == []
    for k, group in enumerate(trace.groups):
        expected = targets[:, k][:, ~np.eye(4, dtype=bool)].mean(axis=1)
        got = scalars(acc, f"geomtrace/{group}/gradvac_target_mean")
        np.testing.assert_allclose([got[s] for s in range(3)], expected, rtol=1e-6, atol=1e-7)
    assert (expected != 0).any()  # the EMA moved the targets


def test_export_trace_writes_every_snapshot(tmp_path):
    gram = planted_gram()
    with gt.TraceWriter(tmp_path / "run", TASKS, [("enc", 2, ["a"]), ("dec", 2, ["b"])]) as w:
        w.write_snapshot(0, gram, {t: 1.0 + i for i, t in enumerate(TASKS)})
        w.write_snapshot(10, 2 * gram, {t: 0.5 for t in TASKS})
    assert export_trace(tmp_path / "run", tmp_path / "tb") == 2
    acc = read_events(tmp_path / "tb")
    # Scaling a Gram matrix leaves its cosines unchanged.
    assert scalars(acc, "geomtrace/enc/mean_cosine") == pytest.approx({0: -1 / 3, 10: -1 / 3})
    assert scalars(acc, "geomtrace/enc/conflict_rate") == pytest.approx({0: 1 / 3, 10: 1 / 3})
    assert scalars(acc, "geomtrace/loss/ru") == pytest.approx({0: 3.0, 10: 0.5})
    assert [e.step for e in acc.Images("geomtrace/dec/cosine")] == [0, 10]


def test_sink_refuses_a_tracer_with_other_tasks(tmp_path, tiny_seq2seq):
    tracer = gt.Tracer(tiny_seq2seq, tasks=["a", "b"])
    with pytest.raises(gt.InvalidInputError, match="differ"):
        TensorBoardSink(tmp_path / "tb", TASKS).attach(tracer)
