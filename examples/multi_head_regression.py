"""A multi-task model with per-task heads: a shared trunk and one regression head per task.

The common multi-task architecture outside translation. Each task's loss reaches the trunk and
its own head only, so a head's parameter group gets a gradient from one task and exactly zero
from the others: geomtrace reports such groups once as *task-specific* and the analyses leave
them out of the similarity tables (their cosines are undefined, not a fault).

The tasks are six noisy linear targets of a shared 8-dimensional input; tasks ``2i`` and
``2i + 1`` share a direction (three pairs), so the trunk's gradients cluster in pairs.

Run it as a user recipe::

    geomtrace trace --recipe examples.multi_head_regression:make_recipe --steps 40 --every 10 \\
        --groups all_layer --runs-dir runs --name heads
    geomtrace analyze runs/heads

``config.langs`` are not used (the tasks are ``head0`` .. ``head5``; ``--set`` keys such as
``batch_per_lang`` (rows per task and step), ``seed``, ``d_model`` (trunk width) apply).
"""

from __future__ import annotations

import torch
from torch import nn

from geomtrace.recipe import Recipe, RecipeConfig

N_TASKS = 6
N_INPUT = 8


class TrunkWithHeads(nn.Module):
    """``trunk``: two Linear+tanh layers shared by every task; ``heads[i]``: task i's output."""

    def __init__(self, n_tasks: int = N_TASKS, width: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(N_INPUT, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
        )
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(n_tasks))

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[task](self.trunk(x)).squeeze(-1)


def make_recipe(config: RecipeConfig, n_tasks: int = N_TASKS) -> Recipe:
    """The six-head regression recipe (seeded by ``config.seed``)."""
    g = torch.Generator().manual_seed(config.seed)
    # tasks 2i and 2i + 1 share a direction (plus a small task-specific part)
    base = torch.randn(n_tasks // 2 + n_tasks % 2, N_INPUT, generator=g)
    directions = base.repeat_interleave(2, dim=0)[:n_tasks]
    directions = directions + 0.2 * torch.randn(n_tasks, N_INPUT, generator=g)
    torch.manual_seed(config.seed)
    width = min(config.d_model, 64)
    model = TrunkWithHeads(n_tasks, width)
    with torch.no_grad():  # paired tasks start from the same head: their trunk gradients agree
        for i in range(1, n_tasks, 2):
            model.heads[i].load_state_dict(model.heads[i - 1].state_dict())
    tasks = [f"head{i}" for i in range(n_tasks)]
    rows = config.batch_per_lang

    def draw(generator: torch.Generator, n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for i, task in enumerate(tasks):
            x = torch.randn(n, N_INPUT, generator=generator)
            y = x @ directions[i] + 0.1 * torch.randn(n, generator=generator)
            out[task] = (x, y)
        return out

    def loss(m: nn.Module, task: str, batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(m(x, tasks.index(task)), y)

    def half_losses(m: nn.Module, task: str, batch):
        # each half's squared-error sum over the whole batch's size: the two add up to loss()
        x, y = batch
        err = (m(x, tasks.index(task)) - y) ** 2
        half = len(y) // 2
        return err[:half].sum() / len(y), err[half:].sum() / len(y)

    test = draw(torch.Generator().manual_seed(config.seed + 10_000), 256)

    def evaluate(m: nn.Module):
        return {t: {"mse": float(loss(m, t, test[t]))} for t in tasks}

    return Recipe(
        model=model,
        tasks=tasks,
        sample=lambda step, generator: draw(generator, rows),
        loss=loss,
        half_losses=half_losses,
        snapshot_sample=lambda step, generator, n: draw(generator, n),
        evaluate=evaluate,
        meta={"recipe": "multi-head regression (examples/multi_head_regression.py)"},
        describe=[f"{n_tasks} regression tasks on a shared trunk, one head per task"],
    )
