"""MultiTask: real training steps of a small Transformer-ish model, checked against plain
backward passes and against combinations computed by hand from per-task gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomtrace._aggregators import GradVac, Mean, PCGrad, Sum
from geomtrace._errors import InvalidInputError
from geomtrace._groups import resolve_groups
from geomtrace._multitask import MultiTask
from geomtrace._reader import open_trace
from geomtrace._tracer import Tracer

TASKS = ["es", "fr", "de", "ru"]


class TinyModel(nn.Module):
    """Embedding + one Transformer encoder layer + per-task-free output head, plus an unused
    layer that no loss reaches (its .grad must stay None)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.encoder = nn.TransformerEncoderLayer(
            16, 2, dim_feedforward=32, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(16, 20)
        self.unused = nn.Linear(3, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))


def make_model(seed: int = 0) -> TinyModel:
    torch.manual_seed(seed)
    return TinyModel()


def task_batches(step: int, tasks=TASKS) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each task has its own token distribution and its own target rule: real conflicts."""
    gen = torch.Generator().manual_seed(1000 + step)
    out = {}
    for n, task in enumerate(tasks):
        x = torch.randint(0, 10 + 2 * n, (4, 6), generator=gen)
        y = (x * (n + 1) + n) % 20
        out[task] = (x, y)
    return out


def loss_of(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1))


def grads_of(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def assert_grads_close(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if a[name] is None or b[name] is None:
            assert a[name] is None and b[name] is None, name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("groups", ["whole_model", "all_matrix"])
def test_sum_equals_plain_summed_loss_backward(groups):
    plain, ours = make_model(), make_model()
    batches = task_batches(0)
    sum(loss_of(plain, b) for b in batches.values()).backward()
    mt = MultiTask(ours, TASKS, aggregator=Sum(), groups=groups)
    with mt.step(0) as s:
        for task, batch in batches.items():
            s.backward(task, loss_of(ours, batch))
    assert_grads_close(grads_of(ours), grads_of(plain))
    assert ours.unused.weight.grad is None  # no task reached it
    assert torch.equal(s.weights, torch.ones(len(mt.groups), 4))


def test_sum_accumulates_like_backward_and_supports_micro_batches_and_shared_forward():
    plain, ours = make_model(), make_model()
    b0, b1 = task_batches(0), task_batches(1)
    # .grad already holds something (gradient accumulation over steps): MultiTask adds to it.
    loss_of(plain, b1["es"]).backward()
    loss_of(ours, b1["es"]).backward()
    # plain: es twice (two micro-batches), fr and de from one shared forward of a concatenation.
    total = loss_of(plain, b0["es"]) + loss_of(plain, b1["es"])
    x = torch.cat([b0["fr"][0], b0["de"][0]])
    logits = plain(x)
    total = total + nn.functional.cross_entropy(logits[:4].reshape(-1, 20), b0["fr"][1].reshape(-1))
    total = total + nn.functional.cross_entropy(logits[4:].reshape(-1, 20), b0["de"][1].reshape(-1))
    total.backward()
    mt = MultiTask(ours, TASKS, aggregator=Sum(), groups="all_layer")
    with mt.step(3) as s:
        s.backward("es", loss_of(ours, b0["es"]))
        s.backward("es", loss_of(ours, b1["es"]))
        logits = ours(x)
        s.backward_shared(
            {
                "fr": nn.functional.cross_entropy(
                    logits[:4].reshape(-1, 20), b0["fr"][1].reshape(-1)
                ),
                "de": nn.functional.cross_entropy(
                    logits[4:].reshape(-1, 20), b0["de"][1].reshape(-1)
                ),
            }
        )
    assert_grads_close(grads_of(ours), grads_of(plain))
    # "ru" had no backward: absent, weight 0 in every group; the others weight 1.
    expected = torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(len(mt.groups), 4)
    assert torch.equal(s.weights, expected)
    assert torch.isnan(s.gram[:, 3]).all()


def by_hand(model: nn.Module, groups: str, batches, twin) -> dict[str, torch.Tensor | None]:
    """The expected .grad of a MultiTask step, from scratch: per-task gradients flattened per
    group, float64 Gram matrices, the twin aggregator's weights, the weighted sum."""
    named = dict(model.named_parameters())
    resolved = resolve_groups(model, groups)
    per_task = []
    for t in TASKS:
        grads = torch.autograd.grad(
            loss_of(model, batches[t]), list(named.values()), allow_unused=True
        )
        per_task.append(dict(zip(named, grads, strict=True)))
    grams, flats = [], []
    for group in resolved:
        rows = [
            torch.cat(
                [
                    (torch.zeros_like(named[n]) if g[n] is None else g[n]).reshape(-1)
                    for n in group.param_names
                ]
            )
            for g in per_task
        ]
        flat = torch.stack(rows).double()  # [K, P_g]
        flats.append(flat)
        grams.append(flat @ flat.T)
    weights = twin.weights(torch.stack(grams))
    expected = {n: None for n in named}
    for k, group in enumerate(resolved):
        update, offset = weights[k] @ flats[k], 0
        for n in group.param_names:
            size = named[n].numel()
            if any(g[n] is not None for g in per_task):
                expected[n] = update[offset : offset + size].view(named[n].shape).float()
            offset += size
    return expected


@pytest.mark.parametrize(
    "make", [lambda: PCGrad(seed=5), lambda: GradVac(beta=0.3, seed=5), lambda: Mean()]
)
def test_grad_is_the_aggregated_combination_over_training_steps(make):
    model = make_model(1)
    reference = make_model(1)
    mt = MultiTask(model, TASKS, aggregator=make(), groups="all_layer")
    twin = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    moved = False
    for step in range(4):
        batches = task_batches(step)
        reference.load_state_dict(model.state_dict())
        expected = by_hand(reference, "all_layer", batches, twin)
        with mt.step(step) as s:
            for task, batch in batches.items():
                s.backward(task, loss_of(model, batch))
        assert_grads_close(grads_of(model), expected, rtol=2e-4, atol=1e-6)
        moved |= not torch.allclose(s.weights, torch.ones_like(s.weights))
        opt.step()
        opt.zero_grad()
    assert moved or isinstance(mt.aggregator, Mean)
    if isinstance(twin, GradVac):
        torch.testing.assert_close(
            mt.aggregator.targets.double(), twin.targets, rtol=1e-3, atol=1e-5
        )


def test_tracer_records_weights_and_gradvac_targets(tmp_path):
    model = make_model(2)
    tracer = Tracer(model, TASKS, groups="enc_dec", every=2, out=tmp_path / "run")
    mt = MultiTask(model, TASKS, aggregator=GradVac(beta=0.5), groups="enc_dec", tracer=tracer)
    recorded = {}
    for step in range(5):
        with mt.step(step) as s:
            for task, batch in task_batches(step).items():
                s.backward(task, loss_of(model, batch))
        if step % 2 == 0:
            recorded[step] = (s.gram.clone(), s.weights.clone(), mt.aggregator.targets.clone())
        model.zero_grad()
    tracer.close()
    trace = open_trace(tmp_path / "run")
    assert trace.steps.tolist() == [0, 2, 4]
    # Groups come in model order: the embedding ("rest") comes first.
    assert trace.groups == [g.name for g in mt.groups] == ["rest", "encoder"]
    weights, targets = trace.array("weights"), trace.array("gradvac_target")
    assert weights.shape == (3, 2, 4) and targets.shape == (3, 2, 4, 4)
    for n, step in enumerate([0, 2, 4]):
        gram, w, t = recorded[step]
        torch.testing.assert_close(torch.from_numpy(weights[n]).float(), w)
        torch.testing.assert_close(torch.from_numpy(targets[n]).float(), t)
        torch.testing.assert_close(torch.from_numpy(trace.gram("encoder")[n]).float(), gram[1])
    losses = trace.losses()
    assert set(losses["task"]) == set(TASKS) and len(losses) == 12


def test_tracer_must_share_groups_and_tasks():
    model = make_model()
    with pytest.raises(InvalidInputError, match=r"groups \['rest', 'encoder'\].*\['whole_model'\]"):
        MultiTask(
            model, TASKS, Sum(), groups="whole_model", tracer=Tracer(model, TASKS, groups="enc_dec")
        )
    with pytest.raises(InvalidInputError, match="tasks"):
        MultiTask(model, TASKS, Sum(), tracer=Tracer(model, TASKS[::-1]))


def test_bad_inputs_are_clear_errors():
    model = make_model()
    mt = MultiTask(model, TASKS, aggregator=PCGrad())
    assert mt.aggregator.name == "pcgrad" and [g.name for g in mt.groups] == ["whole_model"]
    batch = task_batches(0)["es"]
    step = mt.step(0)
    with pytest.raises(InvalidInputError, match="outside a step"):
        step.backward("es", loss_of(model, batch))
    with mt.step(0) as s:
        with pytest.raises(
            InvalidInputError, match=r"unknown task 'it'.*\['es', 'fr', 'de', 'ru'\]"
        ):
            s.backward("it", loss_of(model, batch))
        with torch.no_grad():
            frozen = loss_of(model, batch)
        with pytest.raises(InvalidInputError, match="does not require grad"):
            s.backward("es", frozen)
        with pytest.raises(InvalidInputError, match="inside step 0"):
            with mt.step(1):
                pass
    with pytest.raises(InvalidInputError, match="Aggregator"):
        MultiTask(model, TASKS, aggregator="gradvac")
    with pytest.raises(InvalidInputError, match="appears twice"):
        MultiTask(model, ["es", "es"], aggregator=Sum())


def test_interrupted_step_changes_neither_grad_nor_aggregator_state():
    model = make_model()
    agg = GradVac(beta=0.5)
    mt = MultiTask(model, TASKS, aggregator=agg)
    state = agg.state_dict()
    with pytest.raises(RuntimeError, match="boom"):
        with mt.step(0) as s:
            s.backward("es", loss_of(model, task_batches(0)["es"]))
            raise RuntimeError("boom")
    assert all(p.grad is None for p in model.parameters())
    assert agg.targets is None
    assert torch.equal(agg.generator.get_state(), state["generator"])
    # A step with no backward at all is a no-op too.
    with mt.step(1):
        pass
    assert all(p.grad is None for p in model.parameters())
