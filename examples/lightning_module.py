"""Trace a Lightning fit: a LightningModule whose training step is one loss per language.

    python examples/lightning_module.py --out runs/pl --steps 40
    python examples/lightning_module.py --devices 2 --out runs/pl_ddp    # strategy="ddp", 2 CPUs

A tiny next-byte model on Django's UI strings in four languages. GeometryMixin turns the
module's ``task_losses`` into one backward per language through the Tracer (or a MultiTask,
``--method gradvac``), with the update Lightning would make from the summed loss. With
``--devices 2`` Lightning starts a second process (``strategy="ddp"``, gloo on the CPU): each
task's gradient is the mean over the two ranks and rank 0 writes the trace.
"""

import argparse

import lightning as L
import torch
from _data import django_strings
from torch import nn

import geomtrace as gt
from geomtrace import GradVac, MultiTask
from geomtrace.integrations.lightning import GeometryMixin

LANGS = ["de", "fr", "ru", "ja"]
LENGTH = 32


class PerLanguage(torch.utils.data.Dataset):
    """Item i: {language: its i-th string as bytes + 1 (0 pads)}."""

    def __init__(self, strings: dict[str, list[str]]) -> None:
        self.rows = {}
        for lang, texts in strings.items():
            rows = torch.zeros(len(texts), LENGTH, dtype=torch.long)
            for n, text in enumerate(texts):
                ids = [b + 1 for b in text.encode()[:LENGTH]]
                rows[n, : len(ids)] = torch.tensor(ids)
            self.rows[lang] = rows

    def __len__(self) -> int:
        return len(next(iter(self.rows.values())))

    def __getitem__(self, i: int) -> dict:
        return {lang: rows[i] for lang, rows in self.rows.items()}


class NextByte(GeometryMixin, L.LightningModule):
    def __init__(self, out: str, method: str) -> None:
        super().__init__()
        self.out, self.method = out, method
        self.embed = nn.Embedding(257, 16)
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.head = nn.Linear(32, 257)

    def configure_geometry(self):
        tracer = gt.Tracer(
            self, tasks=LANGS, groups="all_layer", every=5, out=self.out, overwrite=True
        )
        if self.method == "sum":
            return tracer
        return MultiTask(self, LANGS, GradVac(beta=1e-2), groups="all_layer", tracer=tracer)

    def task_losses(self, batch, batch_idx):
        losses = {}
        for lang, rows in batch.items():
            hidden, _ = self.gru(self.embed(rows[:, :-1]))
            logits = self.head(hidden)
            losses[lang] = nn.functional.cross_entropy(
                logits.reshape(-1, 257), rows[:, 1:].reshape(-1), ignore_index=0
            )
        return losses

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pl_example")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--method", choices=["sum", "gradvac"], default="sum")
    parser.add_argument("--devices", type=int, default=1, help="processes (DDP when > 1)")
    args = parser.parse_args()

    torch.manual_seed(0)
    module = NextByte(args.out, args.method)
    loader = torch.utils.data.DataLoader(
        PerLanguage(django_strings(LANGS, 128)), batch_size=8, shuffle=True
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, loader)
    tracer = module.geometry if args.method == "sum" else module.geometry.tracer
    tracer.close()
    if not trainer.is_global_zero:
        return  # rank 0 wrote the trace

    trace = gt.open_trace(args.out)
    print(f"traced steps {trace.steps.tolist()}")
    print(trace.frame().query("task_a < task_b").groupby("group").cosine.mean().round(3))


if __name__ == "__main__":
    main()
