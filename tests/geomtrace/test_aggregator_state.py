"""Aggregator state dicts carry their kind and the task/group names, and refuse what does not fit."""

import pytest
import torch
from torch import nn

from geomtrace import GradVac, InvalidInputError, Mean, MultiTask, PCGrad, Sum

TASKS = ["es", "fr", "de"]


def _gram(seed: int, groups: int = 2, tasks: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(groups, tasks, 7, generator=g)
    return a @ a.transpose(1, 2)


def _trained(agg, steps: int = 3):
    for step in range(steps):
        agg.weights(_gram(step))
    return agg


def test_multitask_binds_names_into_the_state():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    agg = GradVac(beta=0.3)
    MultiTask(model, TASKS, aggregator=agg, groups="all_layer")
    state = agg.state_dict()
    assert state["kind"] == "gradvac"
    assert state["tasks"] == TASKS
    assert state["groups"] == ["0", "1"]
    resumed = GradVac()
    resumed.load_state_dict(state, tasks=TASKS)
    assert resumed.tasks == TASKS and resumed.group_names == ["0", "1"]
    # Building the MultiTask of the resumed run binds the same names: accepted.
    MultiTask(model, TASKS, aggregator=resumed, groups="all_layer")


def test_state_for_other_task_order_is_refused():
    agg = _trained(GradVac(beta=0.5))
    agg.bind(TASKS, ["enc", "dec"])
    state = agg.state_dict()
    other = GradVac()
    with pytest.raises(
        InvalidInputError, match=r"saved for tasks \['es', 'fr', 'de'\].*'fr', 'es'"
    ):
        other.load_state_dict(state, tasks=["fr", "es", "de"])
    assert other.targets is None and other.tasks is None  # unchanged by the refusal
    bound = GradVac()
    bound.bind(["fr", "es", "de"])
    with pytest.raises(InvalidInputError, match="same tasks in the same order"):
        bound.load_state_dict(state)
    with pytest.raises(InvalidInputError, match="groups"):
        GradVac().load_state_dict(state, groups=["dec", "enc"])
    # A state loaded without names adopts the saved ones; binding to others later is refused.
    adopted = GradVac()
    adopted.load_state_dict(state)
    with pytest.raises(InvalidInputError, match=r"serves tasks \['es', 'fr', 'de'\]"):
        adopted.bind(["de", "fr", "es"])


def test_empty_or_foreign_state_is_refused_naming_keys():
    with pytest.raises(InvalidInputError, match="missing key.*seed, generator, beta, eps, targets"):
        GradVac().load_state_dict({})
    with pytest.raises(InvalidInputError, match="'gradvac' aggregator; PCGrad"):
        PCGrad().load_state_dict(GradVac().state_dict())
    legacy = {k: v for k, v in _trained(GradVac()).state_dict().items() if k != "kind"}
    with pytest.raises(InvalidInputError, match="unknown key.*beta, eps, targets"):
        PCGrad().load_state_dict(legacy)
    with pytest.raises(InvalidInputError, match="'pcgrad' aggregator; GradVac"):
        GradVac().load_state_dict(PCGrad().state_dict())
    with pytest.raises(InvalidInputError, match="'gradvac' aggregator; Sum"):
        Sum().load_state_dict(GradVac().state_dict())
    with pytest.raises(InvalidInputError, match="mapping"):
        GradVac().load_state_dict([1, 2])


def test_bad_values_are_refused_before_anything_changes():
    good = _trained(GradVac(beta=0.5, seed=4)).state_dict()
    agg = GradVac(seed=1)
    before = agg.generator.get_state()
    for key, value, message in [
        ("seed", "x", "seed must be an int"),
        ("generator", torch.zeros(3), "not a torch.Generator state"),
        ("beta", float("nan"), "beta must be a number in"),
        ("eps", -1.0, "eps must be a finite number"),
        ("targets", torch.zeros(2, 3), r"float \[G, K, K\]"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            agg.load_state_dict({**good, key: value})
        assert agg.seed == 1 and agg.targets is None
        assert torch.equal(agg.generator.get_state(), before)
    with pytest.raises(InvalidInputError, match="do not match 4 tasks"):
        GradVac().load_state_dict(good, tasks=["a", "b", "c", "d"])


def test_damaged_gradvac_targets_are_refused():
    """Issue 19, defect 7: targets are EMAs of cosines, finite and in [-1, 1]; a state with
    NaN targets used to load, and GradVac then silently behaved like Sum."""
    good = _trained(GradVac(beta=0.5, seed=4)).state_dict()
    for value, message in [
        (float("nan"), r"targets\[0, 1, 2\] = nan"),
        (float("inf"), r"targets\[0, 1, 2\] = inf"),
        (1.5, r"targets\[0, 1, 2\] = 1.5"),
    ]:
        targets = good["targets"].clone()
        targets[0, 1, 2] = value
        agg = GradVac(seed=1)
        with pytest.raises(InvalidInputError, match=message + r".*cosine"):
            agg.load_state_dict({**good, "targets": targets})
        assert agg.targets is None


def test_legacy_state_without_names_still_loads_and_resumes_bit_identically():
    run = _trained(GradVac(beta=0.2, seed=11))
    legacy = {k: v for k, v in run.state_dict().items() if k not in ("kind", "tasks", "groups")}
    resumed = GradVac()
    resumed.load_state_dict(legacy)
    assert torch.equal(resumed.weights(_gram(9)), run.weights(_gram(9)))


def test_stateless_aggregators_round_trip_and_rebind():
    for agg in (Sum(), Mean()):
        agg.load_state_dict({})
        agg.load_state_dict(type(agg)().state_dict())
        agg.bind(["a", "b"])
        agg.bind(["c"])  # no state to misapply: serving other tasks is fine
        with pytest.raises(InvalidInputError, match="unknown key"):
            agg.load_state_dict({"seed": 0})
