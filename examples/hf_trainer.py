"""Trace (or train with PCGrad/GradVac) a Hugging Face Trainer run, one backward per language.

    python examples/hf_trainer.py --out runs/hf --steps 30 --method gradvac
    accelerate launch --num_processes 2 --cpu examples/hf_trainer.py --out runs/hf_ddp
    torchrun --standalone --nproc_per_node 2 examples/hf_trainer.py --out runs/hf_ddp

A tiny random BERT (created from a config: nothing is downloaded) learns masked-byte prediction
on Django's UI strings in four languages. Every example names its language under "task";
TaskCollator turns the names into indices and GeomtraceTrainer gives each language's rows of a
batch their own backward through the Tracer (or MultiTask) step. Launched on several
processes, each rank trains on its own batch of 16, each language's gradient is the mean over
the ranks, and rank 0 writes the trace. ``TrainingArguments`` is built before the Tracer: under
a launcher it sets up torch.distributed, which the Tracer must see.
"""

import argparse

import torch
from _data import django_strings
from transformers import BertConfig, BertForMaskedLM, TrainingArguments

import geomtrace as gt
from geomtrace import GradVac, MultiTask, PCGrad
from geomtrace.integrations.hf import GeomtraceTrainer, TaskCollator

LANGS = ["de", "fr", "ru", "ja"]
LENGTH, PAD, CLS, SEP, MASK, OFFSET = 32, 0, 1, 2, 3, 4


def encode(text: str) -> dict:
    """Byte ids; every third byte is masked and predicted."""
    ids = [CLS] + [b + OFFSET for b in text.encode()[: LENGTH - 2]] + [SEP]
    inputs, labels = list(ids), [-100] * len(ids)
    for p in range(1, len(ids) - 1, 3):
        inputs[p], labels[p] = MASK, ids[p]
    pad = LENGTH - len(ids)
    return {
        "input_ids": inputs + [PAD] * pad,
        "attention_mask": [1] * len(ids) + [0] * pad,
        "labels": labels + [-100] * pad,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hf_example")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--method", choices=["sum", "pcgrad", "gradvac"], default="sum")
    args = parser.parse_args()

    strings = django_strings(LANGS, 64)
    data = [{**encode(t), "task": lang} for lang, texts in strings.items() for t in texts]
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=256 + OFFSET,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=LENGTH,
        )
    )
    training_args = TrainingArguments(
        output_dir=f"{args.out}/hf",
        per_device_train_batch_size=16,
        max_steps=args.steps,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        logging_steps=10,
    )
    tracer = gt.Tracer(
        model,
        tasks=LANGS,
        groups="all_layer",
        every=5,
        out=args.out,
        overwrite=True,
        config={"example": "hf_trainer", "method": args.method},
    )
    step_runner = {"tracer": tracer}
    if args.method != "sum":
        aggregator = PCGrad(seed=0) if args.method == "pcgrad" else GradVac(beta=1e-2)
        step_runner = {"multitask": MultiTask(model, LANGS, aggregator, "all_layer", tracer)}
    trainer = GeomtraceTrainer(
        model=model,
        args=training_args,
        train_dataset=data,
        data_collator=TaskCollator(LANGS),
        **step_runner,
    )
    trainer.train()
    tracer.close()
    if not trainer.is_world_process_zero():
        return  # rank 0 wrote the trace

    trace = gt.open_trace(args.out)
    print(f"traced steps {trace.steps.tolist()} over groups {trace.groups}")
    print(trace.frame().query("task_a < task_b").groupby("group").cosine.mean().round(3))


if __name__ == "__main__":
    main()
