"""The sampler's length windows (issue 11: no length component shared by the tasks of a step)
and the split halves of a sub-batch (a + b is the sub-batch's gradient, .grad unchanged)."""

import pytest
import torch

from geomtrace import InvalidInputError, Tracer
from geomtrace.recipe.config import RecipeConfig, check_snapshot_fields
from geomtrace.recipe.embedded import (
    bucket_window,
    fused_losses,
    half_sizes,
    make_recipe,
    sample_indices,
    split_half_losses,
)
from geomtrace.recipe.training import Recipe, snapshot_options

SIZES = [500, 300, 200, 64]
ROWS = [12, 12, 12, 12]


def old_sampler(sizes, rows, generator):
    """The sampler of main before issue 11 (bucket=true), verbatim."""
    u = float(torch.rand((), generator=generator))
    out = []
    for n, b in zip(sizes, rows, strict=True):
        window = min(n, max(4 * b, n // 8))
        start = min(max(0, int(u * n) - window // 2), n - window)
        out.append(start + torch.randint(window, (b,), generator=generator))
    return out


def test_shared_mode_reproduces_the_old_draw_exactly():
    new, old = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):  # the generator streams stay in step over several steps
        got = sample_indices(SIZES, ROWS, "shared", new)
        for a, b in zip(got, old_sampler(SIZES, ROWS, old), strict=True):
            assert torch.equal(a, b)


def test_independent_windows_per_language_and_half():
    gen = torch.Generator().manual_seed(7)
    picks = sample_indices(SIZES, ROWS, "independent", gen)
    # the quantiles are the first draw of the step: one per language and half
    u = torch.rand(len(SIZES), 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    starts = []
    for n, b, idx, (u0, u1) in zip(SIZES, ROWS, picks, u.tolist(), strict=True):
        window = bucket_window(n, b)
        assert idx.shape == (b,)
        h0, h1 = half_sizes(b)
        for q, part in ((u0, idx[:h0]), (u1, idx[h0:])):
            start = min(max(0, int(q * n) - window // 2), n - window)
            assert ((part >= start) & (part < start + window)).all()  # rows in their own window
            starts.append(start / n)
    assert bucket_window(500, 12) == 62 and bucket_window(64, 12) == 48
    # windows differ across languages (and halves) at this step: no common length quantile
    assert len({round(s, 2) for s in starts}) == len(starts)
    assert max(starts) - min(starts) > 0.5
    again = sample_indices(SIZES, ROWS, "independent", torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(picks, again, strict=True))  # seeded


def test_none_mode_and_unknown_mode():
    picks = sample_indices(SIZES, ROWS, "none", torch.Generator().manual_seed(0))
    assert [p.shape[0] for p in picks] == ROWS
    assert float(picks[0].max() - picks[0].min()) > 200  # anywhere in the 500 rows
    with pytest.raises(InvalidInputError, match="bucket='wide'"):
        sample_indices(SIZES, ROWS, "wide", torch.Generator())


def test_half_sizes_split_by_rows():
    assert half_sizes(12) == (6, 6) and half_sizes(5) == (2, 3) and half_sizes(1) == (0, 1)


@pytest.fixture(scope="module")
def small_recipe():
    torch.manual_seed(0)
    config = RecipeConfig(langs=["es", "ru", "ja"], d_model=32, d_ff=64, batch_per_lang=6)
    recipe, _ = make_recipe(config)
    return recipe, recipe.sample(0, torch.Generator().manual_seed(1))


def grads_of(model, loss_fn, seed):
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks for the same batch shapes
    loss_fn().backward()
    return [p.grad.clone() for p in model.parameters()]


def test_chunked_fused_losses_equal_per_task_losses(small_recipe):
    recipe, batches = small_recipe
    model = recipe.model.eval()
    ref = {t: recipe.loss(model, t, batches[t]) for t in recipe.tasks}
    for chunk in (0, 5):  # one forward; length-sorted forwards of 5 rows (4 chunks)
        losses = fused_losses(model, batches, 0.1, chunk_rows=chunk)
        for t in recipe.tasks:
            torch.testing.assert_close(losses[t], ref[t], rtol=1e-5, atol=1e-6)
    a = grads_of(model, lambda: sum(fused_losses(model, batches, 0.1, 5).values()), 0)
    b = grads_of(model, lambda: sum(ref_losses(recipe, model, batches)), 0)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    model.train()


def ref_losses(recipe, model, batches):
    return [recipe.loss(model, t, batches[t]) for t in recipe.tasks]


def test_half_losses_sum_to_the_batch_loss_and_gradient(small_recipe):
    recipe, batches = small_recipe
    model = recipe.model.train()  # dropout on: one forward keeps the masks of the full batch
    batch = batches["ru"]
    torch.manual_seed(5)
    la, lb = recipe.half_losses(model, "ru", batch)
    torch.manual_seed(5)
    full = recipe.loss(model, "ru", batch)
    torch.testing.assert_close(la + lb, full, rtol=1e-6, atol=1e-7)
    assert float(la.detach()) > 0 and float(lb.detach()) > 0
    # the halves are rows 0-2 and 3-5: each half's loss only depends on its own rows
    src, tgt = batch
    swapped = (torch.cat([src[:3], src[3:].flip(0)]), torch.cat([tgt[:3], tgt[3:].flip(0)]))
    model.eval()
    a1, _ = split_half_losses(model, batch, 0.1)
    a2, _ = split_half_losses(model, swapped, 0.1)
    torch.testing.assert_close(a1, a2, rtol=1e-5, atol=1e-7)
    model.train()
    ga = grads_of(model, lambda: sum(recipe.half_losses(model, "ru", batch)), 9)
    gf = grads_of(model, lambda: recipe.loss(model, "ru", batch), 9)
    for x, y in zip(ga, gf, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_pseudo_task_halves_give_the_full_gram_and_grad(small_recipe):
    """The fallback without the Tracer's halves: halves traced as 2K tasks (es#a, es#b, ...);
    the Gram of a + b (sums of 2 x 2 blocks) is the Gram of the full sub-batches, per group,
    and .grad is the same."""
    recipe, batches = small_recipe
    model = recipe.model.train()
    tasks = recipe.tasks
    full = Tracer(model, tasks, groups="all_layer", every=1)
    model.zero_grad()
    torch.manual_seed(2)
    with full.step(0) as s:
        for t in tasks:
            s.backward(t, recipe.loss(model, t, batches[t]))
    grad_full = [p.grad.clone() for p in model.parameters()]
    halves = Tracer(model, [f"{t}#{h}" for t in tasks for h in "ab"], groups="all_layer")
    model.zero_grad()
    torch.manual_seed(2)
    with halves.step(0) as s:
        for t in tasks:
            la, lb = recipe.half_losses(model, t, batches[t])
            s.backward(f"{t}#a", la, retain_graph=True)
            s.backward(f"{t}#b", lb)
    g2 = halves.last_gram.double()  # [G, 2K, 2K]
    k = len(tasks)
    summed = g2.reshape(g2.shape[0], k, 2, k, 2).sum(dim=(2, 4))
    torch.testing.assert_close(summed, full.last_gram.double(), rtol=1e-4, atol=1e-7)
    assert summed.shape == (8, 3, 3)  # the 8 all_layer groups of this model
    for p, ref in zip(model.parameters(), grad_full, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-6, atol=1e-6)
    # split-half products: positive signal a.b for every task in the whole model
    whole = g2.sum(0).reshape(k, 2, k, 2)
    ab = torch.stack([whole[i, 0, i, 1] for i in range(k)])
    assert (ab > 0).all()


def test_old_bucket_true_config_loads_as_shared(tmp_path, caplog):
    path = tmp_path / "old.toml"
    path.write_text("bucket = true\nsteps = 5\n")
    with caplog.at_level("INFO", logger="geomtrace.recipe.config"):
        config = RecipeConfig.from_toml(path)
    assert config.bucket == "shared" and config.steps == 5
    assert "old spelling" in caplog.text
    path.write_text("bucket = false\n")
    assert RecipeConfig.from_toml(path).bucket == "none"
    assert RecipeConfig().bucket == "independent"
    assert RecipeConfig.from_dict({"bucket": "shared"}).bucket == "shared"
    round_trip = tmp_path / "new.toml"
    RecipeConfig(bucket="none", window=4).write_toml(round_trip)
    assert RecipeConfig.from_toml(round_trip).bucket == "none"


@pytest.mark.parametrize(
    ("values", "message"),
    [({"bucket": "wide"}, "bucket='wide'"), ({"window": 0}, "window=0"),
     ({"window": 30, "every": 20, "snapshot_rows": 0}, "window=30 > every=20"),
     ({"halves": 1}, "halves"), ({"snapshot_rows": 1}, "snapshot_rows=1"),
     ({"window": 4}, "snapshot_rows=768 with window=4")],
)  # fmt: skip
def test_check_snapshot_fields(values, message):
    config = RecipeConfig(**values)
    with pytest.raises(InvalidInputError, match=message):
        check_snapshot_fields(config)


def test_snapshot_options_say_what_does_not_apply_and_the_tracer_takes_the_rest(caplog):
    """An option that cannot apply is dropped with a log line that says why; what is left is
    accepted by the real Tracer, which records it in the trace's meta."""
    model = torch.nn.Linear(1, 1)
    recipe = Recipe(model=model, tasks=["a"], sample=None, loss=None)
    logger = "geomtrace.recipe.training"

    def options(config):
        caplog.clear()
        with caplog.at_level("INFO", logger=logger):
            got = snapshot_options(recipe, config)
        tracer = Tracer(model, ["a", "b"], every=config.every, **got)  # the real Tracer takes it
        assert tracer.halves is bool(got.get("halves")) and tracer.window == got.get("window", 1)
        return got, caplog.text

    assert options(RecipeConfig(halves=False)) == ({}, "")
    got, text = options(RecipeConfig(probe=True, halves=True, window=4, snapshot_rows=0))
    assert got == {} and "probe mode" in text and "halves=true, window=4 not applied" in text
    got, text = options(RecipeConfig(method="gradvac", halves=True, window=4, snapshot_rows=0))
    assert got == {}  # no window with an aggregator, and halves need the recipe's half_losses
    assert "method gradvac" in text and "window=4 not applied" in text
    assert "this recipe has no half_losses" in text and "no reliability" in text
    got, text = options(RecipeConfig(halves=True))
    assert got == {} and "this recipe has no half_losses" in text
    recipe.half_losses = lambda model, task, batch: (batch, batch)
    got, text = options(RecipeConfig(method="gradvac", halves=True, window=4, snapshot_rows=0))
    assert got == {"halves": True} and "half_losses" not in text
    assert options(RecipeConfig(halves=True, window=4, snapshot_rows=0)) == (
        {"halves": True, "window": 4}, "",
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="window=0"):  # invalid in itself: refused
        snapshot_options(recipe, RecipeConfig(window=0))


def test_probe_rows_interleave_lengths_so_halves_match():
    config = RecipeConfig(
        langs=["es", "ja"], domains=["django"], d_model=32, d_ff=64, probe=True, probe_size=16
    )
    recipe, _ = make_recipe(config)
    src, tgt = recipe.probe["es"]
    lengths = (src != 256).sum(1) + (tgt != 256).sum(1)  # PAD = 256; rows sort by src + tgt
    first, second = lengths[:8], lengths[8:]
    # rank 2i in the first half, rank 2i + 1 in the second: pairwise no longer
    assert (first <= second).all() and (first[1:] >= second[:-1]).all()
    assert float(second.sum() - first.sum()) == 25  # 265 vs 240 length units
    ranked = lengths.sort().values  # a contiguous split of sorted rows: 144 vs 359
    assert float(ranked[8:].sum() - ranked[:8].sum()) == 215


def test_tracer_halves_keep_grad_and_gram_and_split_by_rows(small_recipe):
    """With the Tracer's halves: .grad and the Gram equal those without halves, and
    a.a + b.b + 2 a.b = |a + b|^2 per task and group (a + b is the full sub-batch gradient)."""
    recipe, batches = small_recipe
    model = recipe.model.train()
    tasks = recipe.tasks
    results = {}
    for halves in (False, True):
        tracer = Tracer(model, tasks, groups="all_layer", halves=halves)
        model.zero_grad()
        torch.manual_seed(4)
        with tracer.step(0) as s:
            for t in tasks:
                if halves:
                    la, lb = recipe.half_losses(model, t, batches[t])
                    s.backward(t, la + lb.detach(), retain_graph=True, half=0)
                    s.backward(t, lb + la.detach(), half=1)
                else:
                    s.backward(t, recipe.loss(model, t, batches[t]))
        grads = [p.grad.clone() for p in model.parameters()]
        results[halves] = (grads, tracer.last_gram.double(), s.mean_losses())
    (g0, gram0, loss0), (g1, gram1, loss1) = results[False], results[True]
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gram1, gram0, rtol=1e-5, atol=1e-8)
    assert loss1 == pytest.approx(loss0, rel=1e-6)  # the recorded loss is the batch's loss
    split = torch.as_tensor(tracer.capture.split_half()).double()  # [G, K, 3]
    diag = torch.diagonal(gram1, dim1=-2, dim2=-1)
    torch.testing.assert_close(split[..., 0] + split[..., 1] + 2 * split[..., 2], diag)
    assert (split[..., 2].sum(0) > 0).all()  # whole model: positive split-half product


@pytest.mark.slow
def test_run_with_halves_and_window(tmp_path):
    from geomtrace import open_trace
    from geomtrace.recipe import run

    tiny = {"langs": ["es", "ru", "ja"], "steps": 6, "every": 3, "d_model": 32, "d_ff": 64,
            "batch_per_lang": 4, "max_bytes": 24, "out": str(tmp_path)}  # fmt: skip
    plain = open_trace(run(tiny | {"name": "h", "halves": True, "snapshot_rows": 0}))
    assert plain.has_halves and plain.reliability("encoder.layers.0").shape == (3, 3)
    windowed = open_trace(run(tiny | {"name": "w", "window": 2, "snapshot_rows": 0}))
    assert windowed.steps.tolist() == [0, 3, 6] and windowed.has_halves
    assert windowed.meta("window") == 2
    assert windowed.array("window_steps")[:, 0].tolist() == [2, 2, 1]  # the last: the end


@pytest.mark.slow
def test_separate_snapshot_batches_leave_training_unchanged(tmp_path):
    """snapshot_rows: the snapshot comes from its own eval-mode batch (own generator), so the
    trained weights do not depend on its size; the trace has halves from its row halves."""
    from geomtrace import open_trace
    from geomtrace.recipe import load_model, run

    tiny = {"langs": ["es", "ru", "ja"], "steps": 4, "every": 2, "d_model": 32, "d_ff": 64,
            "batch_per_lang": 4, "max_bytes": 24, "out": str(tmp_path)}  # fmt: skip
    a = run(tiny | {"name": "a", "snapshot_rows": 8})
    b = run(tiny | {"name": "b", "snapshot_rows": 16})
    for p, q in zip(load_model(a).parameters(), load_model(b).parameters(), strict=True):
        assert torch.equal(p, q)
    ta, tb = open_trace(a), open_trace(b)
    assert ta.steps.tolist() == [0, 2, 4] and ta.has_halves
    assert not (ta.gram("embed") == tb.gram("embed")).all()  # other snapshot rows
    rel_a = ta.reliability("encoder.layers.0")
    assert rel_a.shape == (3, 3) and float(rel_a[0].mean()) > 0.5  # step 0: mostly signal
    losses = ta.losses()
    assert losses[losses.step == 0].loss.mean() > 5  # the eval-mode snapshot loss, untrained
