"""GeometryMixin: real Lightning fits (tiny byte-level next-byte model) on Django strings."""

import numpy as np
import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")

import geomtrace as gt  # noqa: E402
from geomtrace import GradVac, MultiTask, Sum  # noqa: E402
from geomtrace.integrations.lightning import GeometryMixin  # noqa: E402

LENGTH = 16
LR = 0.5


def byte_rows(texts: list[str]) -> torch.Tensor:
    """[N, LENGTH] bytes + 1 (0 is padding, ignored by the loss)."""
    rows = torch.zeros(len(texts), LENGTH, dtype=torch.long)
    for n, text in enumerate(texts):
        ids = [b + 1 for b in text.encode()[:LENGTH]]
        rows[n, : len(ids)] = torch.tensor(ids)
    return rows


class PerLanguage(torch.utils.data.Dataset):
    """Item i: {language: its i-th string}, so a batch holds every language's rows."""

    def __init__(self, strings: dict[str, list[str]]) -> None:
        self.rows = {lang: byte_rows(texts) for lang, texts in strings.items()}

    def __len__(self) -> int:
        return len(next(iter(self.rows.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {lang: rows[i] for lang, rows in self.rows.items()}


class NextByte(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(257, 8)
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 257)

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        logits = self.out(torch.tanh(self.hidden(self.embed(rows[:, :-1]))))
        return nn.functional.cross_entropy(
            logits.reshape(-1, 257), rows[:, 1:].reshape(-1), ignore_index=0
        )


class Plain(L.LightningModule):
    """The reference: one backward of the summed loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = NextByte()

    def training_step(self, batch, batch_idx):
        return sum(self.net.loss(rows) for rows in batch.values())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


class Traced(GeometryMixin, Plain):
    def __init__(self, make_geometry) -> None:
        super().__init__()
        self.make_geometry = make_geometry

    def configure_geometry(self):
        return self.make_geometry(self)

    def task_losses(self, batch, batch_idx):
        return {lang: self.net.loss(rows) for lang, rows in batch.items()}


def fit(module, strings, **trainer_args):
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"max_steps": 4, **trainer_args},
    )
    loader = torch.utils.data.DataLoader(PerLanguage(strings), batch_size=2)
    trainer.fit(module, loader)
    return module


def assert_same_parameters(a, b, atol=1e-5):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=atol, rtol=0), (name, (p - q).abs().max().item())


@pytest.mark.parametrize("accumulate", [1, 2])
def test_tracer_matches_plain_lightning(tmp_path, multilingual, accumulate):
    langs = list(multilingual)
    run = tmp_path / "run"
    traced = fit(
        Traced(lambda m: gt.Tracer(m, tasks=langs, groups="all_layer", every=1, out=run)),
        multilingual,
        accumulate_grad_batches=accumulate,
    )
    traced.geometry.close()
    plain = fit(Plain(), multilingual, accumulate_grad_batches=accumulate)
    assert_same_parameters(traced, plain)

    trace = gt.open_trace(run)
    assert trace.tasks == langs
    np.testing.assert_array_equal(trace.steps, [0, 1, 2, 3])  # one snapshot per update
    assert trace.groups == ["net.embed", "net.hidden", "net.out"]
    for group in trace.groups:
        cosine = trace.cosine(group)
        assert np.isfinite(cosine).all()  # every language at every step
        np.testing.assert_allclose(np.diagonal(cosine, axis1=1, axis2=2), 1.0, atol=1e-5)
    # Losses are the mean of the step's micro-batches, divided by the accumulation.
    losses = trace.losses()
    assert set(losses.task) == set(langs) and len(losses) == 4 * len(langs)


def test_gradvac_multitask_matches_a_hand_written_loop(tmp_path, multilingual):
    langs = list(multilingual)
    run = tmp_path / "run"

    def geometry(module):
        tracer = gt.Tracer(module, tasks=langs, groups="all_layer", every=1, out=run)
        return MultiTask(
            module, langs, aggregator=GradVac(beta=0.5, seed=0), groups="all_layer", tracer=tracer
        )

    traced = fit(Traced(geometry), multilingual)
    traced.geometry.tracer.close()

    reference = NextByte()
    mt = MultiTask(reference, langs, aggregator=GradVac(beta=0.5, seed=0), groups="all_layer")
    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    loader = torch.utils.data.DataLoader(PerLanguage(multilingual), batch_size=2)
    for step, batch in zip(range(4), loader, strict=False):
        with mt.step(step) as s:
            for lang, rows in batch.items():
                s.backward(lang, reference.loss(rows))
        opt.step()
        opt.zero_grad()
    assert_same_parameters(traced.net, reference)

    weights = gt.open_trace(run).array("weights")
    assert weights.shape == (4, 3, len(langs))
    # After step 0 the EMA targets are positive: cosines below them get GradVac's correction.
    assert (weights[1:] != 1.0).any()
    targets = gt.open_trace(run).array("gradvac_target")
    assert targets.shape == (4, 3, len(langs), len(langs))


def test_manual_optimisation_with_geometry_step(tmp_path, multilingual):
    langs = list(multilingual)

    class Manual(Traced):
        def __init__(self, make_geometry):
            super().__init__(make_geometry)
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            with self.geometry_step() as s:
                for lang, rows in batch.items():
                    s.backward(lang, self.net.loss(rows))
            opt.step()
            opt.zero_grad()

    run = tmp_path / "run"
    manual = fit(
        Manual(lambda m: MultiTask(m, langs, Sum(), tracer=gt.Tracer(m, langs, every=2, out=run))),
        multilingual,
    )
    manual.geometry.tracer.close()
    assert_same_parameters(manual, fit(Plain(), multilingual))
    np.testing.assert_array_equal(gt.open_trace(run).steps, [0, 2])


def test_configure_geometry_must_return_a_tracer_or_multitask(multilingual):
    with pytest.raises(gt.InvalidInputError, match="must return a geomtrace Tracer or MultiTask"):
        fit(Traced(lambda m: object()), multilingual)


def test_geometry_set_in_init_is_used(tmp_path, multilingual):
    """Without configure_geometry, the mixin runs the ``self.geometry`` given in ``__init__``."""
    langs = list(multilingual)

    class InInit(GeometryMixin, Plain):
        def __init__(self):
            super().__init__()
            self.geometry = gt.Tracer(self, tasks=langs, every=[1, 3])

        def task_losses(self, batch, batch_idx):
            return {lang: self.net.loss(rows) for lang, rows in batch.items()}

    module = fit(InInit(), multilingual)
    assert_same_parameters(module, fit(Plain(), multilingual))
    gram = module.geometry.last_gram  # step 3's Gram matrix [1, K, K]
    assert gram.shape == (1, len(langs), len(langs))
    assert torch.isfinite(gram).all() and (torch.diagonal(gram, dim1=1, dim2=2) > 0).all()


def fp16(init_scale: float):
    """Lightning's fp16 mixed precision with a GradScaler, on the CPU (autocast to float16)."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return MixedPrecision("16-mixed", "cpu", scaler=scaler)


def test_fp16_multitask_unscales_and_skips_overflows_like_plain_lightning(tmp_path, multilingual):
    """MultiTask(Sum) under fp16 + GradScaler equals Lightning's plain fp16 training, including
    the updates the scaler skips: at scale 2^20 the first steps overflow in float16."""
    langs = list(multilingual)
    run = tmp_path / "run"

    def geometry(module):
        tracer = gt.Tracer(module, tasks=langs, groups="all_layer", every=1, out=run)
        return MultiTask(module, langs, aggregator=Sum(), groups="all_layer", tracer=tracer)

    ours, theirs = fp16(2.0**20), fp16(2.0**20)
    traced = fit(Traced(geometry), multilingual, plugins=[ours], max_steps=6)
    traced.geometry.tracer.close()
    plain = fit(Plain(), multilingual, plugins=[theirs], max_steps=6)
    assert_same_parameters(traced, plain)
    # The scaler saw the same overflows: it lowered its scale by the same factor.
    assert ours.scaler.get_scale() == theirs.scaler.get_scale() < 2.0**20
    nonfinite = gt.open_trace(run).array("nonfinite")  # [S, K]: tasks whose gradient overflowed
    assert nonfinite[0].any() and not nonfinite[-1].any()
    assert not torch.allclose(traced.net.out.weight, NextByte().out.weight, atol=1e-4)


def test_fp16_traces_unscaled_gradients(tmp_path, multilingual):
    """The Gram matrices of an fp16 run are of the true gradients (not scale^2 times them):
    step 0 matches the fp32 run's up to float16 rounding, for a Tracer and a GradVac MultiTask."""
    langs = list(multilingual)

    def tracer(module, name):
        return gt.Tracer(module, tasks=langs, groups="all_layer", every=1, out=tmp_path / name)

    fit(Traced(lambda m: tracer(m, "fp32")), multilingual, max_steps=1).geometry.close()
    fit(
        Traced(lambda m: tracer(m, "fp16")), multilingual, plugins=[fp16(2.0**14)], max_steps=1
    ).geometry.close()
    module = fit(
        Traced(lambda m: MultiTask(m, langs, GradVac(beta=0.5), "all_layer", tracer(m, "gv"))),
        multilingual,
        plugins=[fp16(2.0**14)],
        max_steps=1,
    )
    module.geometry.tracer.close()
    reference = gt.open_trace(tmp_path / "fp32")
    for name in ("fp16", "gv"):
        trace = gt.open_trace(tmp_path / name)
        for group in reference.groups:
            exact, half = reference.gram(group)[0], trace.gram(group)[0]
            np.testing.assert_allclose(half, exact, rtol=2e-2, atol=2e-2 * np.abs(exact).max())
