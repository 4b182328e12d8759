"""Shared test fixtures: small, real models (created from configs, seeded)."""

import pytest
import torch
from torch import nn

# Small test models gain nothing from intra-op threads, and OpenMP threads spin-waiting on a
# busy 2-core machine can slow a tiny backward 100x: tests run single-threaded.
torch.set_num_threads(1)


class TinySeq2Seq(nn.Module):
    """A small encoder-decoder Transformer with embeddings and an output projection."""

    def __init__(self, vocab: int = 11, d_model: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.transformer = nn.Transformer(
            d_model=d_model,
            nhead=2,
            num_encoder_layers=layers,
            num_decoder_layers=layers,
            dim_feedforward=32,
            dropout=0.0,
            batch_first=True,
        )
        self.out = nn.Linear(d_model, vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.out(self.transformer(self.embed(src), self.embed(tgt)))

    def loss(self, src: torch.Tensor, tgt: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = self(src, tgt[:, :-1])
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), reduction=reduction
        )


@pytest.fixture
def tiny_seq2seq() -> TinySeq2Seq:
    torch.manual_seed(0)
    return TinySeq2Seq()


@pytest.fixture
def task_batches():
    """Four tasks, each with its own (src, tgt) sub-batch of 3 rows."""
    g = torch.Generator().manual_seed(1)
    return {
        task: (torch.randint(0, 11, (3, 5), generator=g), torch.randint(0, 11, (3, 6), generator=g))
        for task in ["es", "fr", "ru", "ja"]
    }
