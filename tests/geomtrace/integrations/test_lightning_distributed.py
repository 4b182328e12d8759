"""GeometryMixin under ``Trainer(strategy="ddp", devices=2, accelerator="cpu")`` (2 real processes
launched with torchrun, gloo) against one process on the same global batch.

Each item holds one string per language; the global batch has 4 items. With DDP, an ordered
DistributedSampler gives rank r the items r, r + 2, ... so the two ranks' batches of 2 make up
the single process's batch of 4. Each task's loss is the mean over its rows of the per-row
summed token loss, so the mean over ranks of the ranks' task gradients is the single-process
task gradient. The traces and the trained parameters must match to 1e-5, for a Tracer with
untraced steps in between and for MultiTask(GradVac), with gradient accumulation over 2
batches in the Tracer run.

This file is also the worker: ``torchrun --nproc_per_node 2 test_lightning_distributed.py OUT
SCENARIO...``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")

import geomtrace as gt  # noqa: E402
from geomtrace import GradVac, MultiTask  # noqa: E402
from geomtrace.integrations.lightning import GeometryMixin  # noqa: E402
from geomtrace.recipe.corpus import parallel_strings  # noqa: E402

LANGS = ["de", "fr", "ru", "ja"]
LENGTH, GLOBAL_BATCH, STEPS = 16, 4, 4
SCENARIOS = ["tracer", "gradvac"]


class PerLanguage(torch.utils.data.Dataset):
    """Item i: {language: its i-th string as LENGTH byte ids + 1 (0 pads)}."""

    def __init__(self) -> None:
        self.rows = {}
        for lang, texts in parallel_strings(LANGS, 8).items():
            rows = torch.zeros(len(texts), LENGTH, dtype=torch.long)
            for n, text in enumerate(texts):
                ids = [b + 1 for b in text.encode()[:LENGTH]]
                rows[n, : len(ids)] = torch.tensor(ids)
            self.rows[lang] = rows

    def __len__(self) -> int:
        return len(self.rows[LANGS[0]])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {lang: rows[i] for lang, rows in self.rows.items()}


class Model(GeometryMixin, L.LightningModule):
    def __init__(self, scenario: str, out: Path) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(257, 8)
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 257)
        self.scenario, self.run_dir = scenario, out / scenario

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean over rows of each row's summed next-byte loss (padding ignored)."""
        logits = self.out(torch.tanh(self.hidden(self.embed(rows[:, :-1]))))
        summed = nn.functional.cross_entropy(
            logits.reshape(-1, 257), rows[:, 1:].reshape(-1), ignore_index=0, reduction="sum"
        )
        return summed / rows.shape[0]

    def configure_geometry(self):
        if self.scenario == "tracer":
            return gt.Tracer(self, LANGS, groups="all_layer", every=[0, 2], out=self.run_dir)
        tracer = gt.Tracer(self, LANGS, groups="all_layer", every=1, out=self.run_dir)
        return MultiTask(self, LANGS, GradVac(beta=0.5, seed=0), "all_layer", tracer)

    def task_losses(self, batch, batch_idx):
        return {lang: self.loss(rows) for lang, rows in batch.items()}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def train(scenario: str, out: Path, world: int = 1) -> dict[str, torch.Tensor]:
    """``STEPS`` updates; the final parameters by name."""
    dataset = PerLanguage()
    options, sampler = {"devices": 1}, None
    if world > 1:
        # Lightning's own distributed sampler shuffles training data: give it an ordered one.
        options = {"strategy": "ddp", "devices": world, "use_distributed_sampler": False}
        rank = int(os.environ["RANK"])
        sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=False)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        accumulate_grad_batches=2 if scenario == "tracer" else 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )
    module = Model(scenario, out)
    loader = torch.utils.data.DataLoader(dataset, GLOBAL_BATCH // world, sampler=sampler)
    trainer.fit(module, loader)
    tracer = module.geometry if scenario == "tracer" else module.geometry.tracer
    tracer.close()
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def launch(out: Path, scenarios: list[str], timeout: float = 240) -> tuple[int, str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", __file__, str(out), *scenarios]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return -1, str(exc.stdout) + str(exc.stderr)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("pl_ddp")
    code, output = launch(out, SCENARIOS)
    assert code == 0, output[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ddp_matches_one_process_on_the_global_batch(two_processes, scenario, tmp_path):
    single = train(scenario, tmp_path)
    ta, tb = gt.open_trace(two_processes / scenario), gt.open_trace(tmp_path / scenario)
    assert (
        ta.steps.tolist() == tb.steps.tolist() == ([0, 2] if scenario == "tracer" else [0, 1, 2, 3])
    )
    assert ta.meta("world_size") == 2
    for group in ta.groups:
        assert np.isfinite(ta.gram(group)).all()  # every language at every snapshot
        # Relative to the group's largest entry: near-orthogonal pairs' dots are sums that cancel.
        scale = np.nanmax(np.abs(tb.gram(group)))
        np.testing.assert_allclose(ta.gram(group), tb.gram(group), rtol=1e-5, atol=1e-6 * scale)
    la = ta.losses().sort_values(["step", "task"]).reset_index(drop=True)
    lb = tb.losses().sort_values(["step", "task"]).reset_index(drop=True)
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=1e-5)
    assert ta.array_names() == tb.array_names()
    for name in ta.array_names():
        np.testing.assert_allclose(ta.array(name), tb.array(name), rtol=1e-5, atol=1e-6)
    for rank in (0, 1):
        params = torch.load(two_processes / f"{scenario}_params_rank{rank}.pt")
        for name, value in single.items():
            torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-5)
    start = Model(scenario, tmp_path).out.weight
    assert not torch.allclose(single["out.weight"], start, atol=1e-3)  # training moved


def worker(out: Path, scenarios: list[str]) -> None:
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    for scenario in scenarios:
        params = train(scenario, out, world)
        torch.save(params, out / f"{scenario}_params_rank{rank}.pt")
    # Tear the process group down before the interpreter exits: a gloo group left alive at
    # exit can abort a rank ("terminate called without an active exception"), seen once in a
    # loaded CI rehearsal.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2:])
