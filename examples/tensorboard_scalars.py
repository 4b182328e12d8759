"""Per traced step, gradient-geometry scalars and cosine heatmaps in TensorBoard.

    python examples/tensorboard_scalars.py --out runs/tb --steps 30
    tensorboard --logdir runs/tb/tb

A plain PyTorch loop (a tiny next-byte GRU on Django's UI strings in four languages) with a
Tracer; TensorBoardSink.attach(tracer) logs every snapshot as it is written: mean cosine and
conflict rate per group, per-language losses, and the cosine heatmap per group. export_trace
does the same afterwards from any trace on disk.
"""

import argparse

import torch
from _data import django_strings
from torch import nn

import geomtrace as gt
from geomtrace.integrations.tensorboard import TensorBoardSink, export_trace

LANGS = ["de", "fr", "ru", "ja", "ar", "el"]
LENGTH = 32


def byte_rows(texts: list[str]) -> torch.Tensor:
    rows = torch.zeros(len(texts), LENGTH, dtype=torch.long)
    for n, text in enumerate(texts):
        ids = [b + 1 for b in text.encode()[:LENGTH]]
        rows[n, : len(ids)] = torch.tensor(ids)
    return rows


class NextByte(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(257, 16)
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.head = nn.Linear(32, 257)

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.embed(rows[:, :-1]))
        logits = self.head(hidden)
        return nn.functional.cross_entropy(
            logits.reshape(-1, 257), rows[:, 1:].reshape(-1), ignore_index=0
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/tb_example")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    data = {lang: byte_rows(t) for lang, t in django_strings(LANGS, 128).items()}
    torch.manual_seed(0)
    model = NextByte()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    with gt.Tracer(
        model, tasks=LANGS, groups="all_layer", every=5, out=args.out, overwrite=True
    ) as tracer:
        sink = TensorBoardSink(f"{args.out}/tb", LANGS).attach(tracer)
        for step in range(args.steps):
            with tracer.step(step) as s:
                for lang, rows in data.items():
                    pick = torch.randint(len(rows), (8,), generator=generator)
                    s.backward(lang, model.loss(rows[pick]))
            optimizer.step()
            optimizer.zero_grad()
        sink.close()
    written = export_trace(args.out, f"{args.out}/tb_export")
    print(f"live: {args.out}/tb; exported {written} snapshots to {args.out}/tb_export")


if __name__ == "__main__":
    main()
