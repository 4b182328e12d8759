"""The Hugging Face mixin on 2 real processes (torchrun, gloo on CPU) against one process.

A tiny GPT-2 learns next-byte prediction on Django strings in four languages; the 32 examples
are in a fixed shuffled order and sampled sequentially, so the global batch of step s is
examples [8s, 8s + 8) in both runs: one process takes all 8, rank r of 2 takes [8s + 4r,
8s + 4r + 4) (accelerate hands out the per-device batches in turn), and the two ranks see
different sets of languages. GPT-2's loss divides by the Trainer's ``num_items_in_batch``,
which the Trainer counts over all ranks, so each rank's task loss is its share of the
global-batch loss and the mean over ranks of the task gradients is the single-process task
gradient. The traces (Gram matrices, losses, weights) and the trained parameters must match
to 1e-5, for a Tracer with an untraced step in between (DDP-style reduction of a plain step)
and for MultiTask(GradVac).

This file is also the worker: ``torchrun --nproc_per_node 2 test_hf_distributed.py OUT
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

pytest.importorskip("transformers")

import geomtrace as gt  # noqa: E402
from geomtrace import GradVac, MultiTask  # noqa: E402
from geomtrace.integrations.hf import GeomtraceTrainer, TaskCollator  # noqa: E402
from geomtrace.recipe.corpus import parallel_strings  # noqa: E402

LANGS = ["de", "fr", "ru", "ja"]
LENGTH, PAD, OFFSET = 20, 0, 4
GLOBAL_BATCH, STEPS = 8, 3
SCENARIOS = ["tracer", "gradvac"]


def examples() -> list[dict]:
    """32 examples (8 strings per language) in a fixed shuffled order."""
    data = []
    for lang, texts in parallel_strings(LANGS, 8).items():
        for text in texts:
            ids = [b + OFFSET for b in text.encode()[:LENGTH]]
            pad = LENGTH - len(ids)
            data.append(
                {
                    "input_ids": ids + [PAD] * pad,
                    "attention_mask": [1] * len(ids) + [0] * pad,
                    "labels": ids + [-100] * pad,
                    "task": lang,
                }
            )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3)).tolist()
    return [data[i] for i in order]


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=256 + OFFSET, n_positions=LENGTH, n_embd=16, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def train(scenario: str, out: Path, world: int = 1) -> dict[str, torch.Tensor]:
    """``STEPS`` updates of ``scenario`` on the global batch; the final parameters by name."""
    from transformers import TrainingArguments

    # TrainingArguments sets up torch.distributed under torchrun: build geomtrace after it.
    args = TrainingArguments(
        output_dir=str(out / "hf"),
        per_device_train_batch_size=GLOBAL_BATCH // world,
        max_steps=STEPS,
        learning_rate=1e-2,
        seed=0,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        optim="adamw_torch",
        train_sampling_strategy="sequential",
    )
    model = tiny_gpt2()
    if scenario == "tracer":
        # Step 1 is not traced: a plain step, reduced over ranks like DDP's.
        tracer = gt.Tracer(model, LANGS, groups="all_layer", every=[0, 2], out=out / scenario)
        runner = {"tracer": tracer}
    else:
        tracer = gt.Tracer(model, LANGS, groups="all_layer", every=1, out=out / scenario)
        mt = MultiTask(model, LANGS, GradVac(beta=0.5, seed=0), groups="all_layer", tracer=tracer)
        runner = {"multitask": mt}
    trainer = GeomtraceTrainer(
        model=model,
        args=args,
        train_dataset=examples(),
        data_collator=TaskCollator(LANGS),
        **runner,
    )
    trainer.train()
    tracer.close()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def launch(out: Path, scenarios: list[str], timeout: float = 240) -> tuple[int, str]:
    """``torchrun --standalone --nproc_per_node 2`` of this file (the command users run)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", __file__, str(out), *scenarios]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return -1, str(exc.stdout) + str(exc.stderr)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_ddp")
    code, output = launch(out, ["early", *SCENARIOS])
    assert code == 0, output[-4000:]
    return out


def assert_traces_equal(a: Path, b: Path) -> None:
    ta, tb = gt.open_trace(a), gt.open_trace(b)
    assert ta.steps.tolist() == tb.steps.tolist()
    assert ta.groups == tb.groups
    assert ta.meta("world_size") == 2 and tb.meta("world_size") is None
    for group in ta.groups:
        # Relative to the group's largest entry: near-orthogonal pairs' dots are sums that cancel.
        scale = np.nanmax(np.abs(tb.gram(group)))
        np.testing.assert_allclose(ta.gram(group), tb.gram(group), rtol=1e-5, atol=1e-6 * scale)
    la = ta.losses().sort_values(["step", "task"]).reset_index(drop=True)
    lb = tb.losses().sort_values(["step", "task"]).reset_index(drop=True)
    assert la[["step", "task"]].equals(lb[["step", "task"]])
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=1e-5)
    assert ta.array_names() == tb.array_names()
    for name in ta.array_names():
        np.testing.assert_allclose(ta.array(name), tb.array(name), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_processes_match_one_process_on_the_global_batch(two_processes, scenario, tmp_path):
    single = train(scenario, tmp_path)
    assert_traces_equal(two_processes / scenario, tmp_path / scenario)
    trace = gt.open_trace(two_processes / scenario)
    assert trace.steps.tolist() == ([0, 2] if scenario == "tracer" else [0, 1, 2])
    # Every language has a gradient in some snapshot, and the ranks saw different languages.
    diag = np.diagonal(trace.gram(trace.groups[0]), axis1=1, axis2=2)
    assert (~np.isnan(diag)).any(axis=0).all()
    for rank in (0, 1):
        params = torch.load(two_processes / f"{scenario}_params_rank{rank}.pt")
        for name, value in single.items():
            torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-5)
    # Training moved the parameters (equality is not vacuous).
    start = tiny_gpt2().transformer.wte.weight
    assert not torch.allclose(single["transformer.wte.weight"], start, atol=1e-3)


def test_a_tracer_built_before_the_process_group_is_refused(two_processes):
    for rank in (0, 1):
        message = (two_processes / f"early_rank{rank}.txt").read_text()
        assert "2 processes" in message and "after TrainingArguments" in message


def test_examples_split_languages_unevenly_between_ranks():
    """The premise of the test above: in step 0 the two ranks' rows hold different languages."""
    data = examples()
    first = [{row["task"] for row in data[4 * r : 4 * r + 4]} for r in (0, 1)]
    assert first[0] != first[1]


def built_too_early(out: Path, rank: int) -> None:
    """A Tracer built before TrainingArguments set up torch.distributed: refused on every rank
    (its message is saved for the test)."""
    from transformers import TrainingArguments

    model = tiny_gpt2()
    tracer = gt.Tracer(model, LANGS)  # torch.distributed is not initialised yet
    args = TrainingArguments(output_dir=str(out / "early"), use_cpu=True, report_to="none")
    try:
        GeomtraceTrainer(model=model, args=args, data_collator=TaskCollator(LANGS), tracer=tracer)
    except gt.InvalidInputError as err:
        (out / f"early_rank{rank}.txt").write_text(str(err))


def worker(out: Path, scenarios: list[str]) -> None:
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    for scenario in scenarios:
        if scenario == "early":
            built_too_early(out, rank)
            continue
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
