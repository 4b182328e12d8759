"""A small byte-level Transformer encoder-decoder with language tags.

Vocabulary: the 256 byte values, then PAD, BOS, EOS, then one tag per language. A sequence is
UTF-8 bytes, so every script is covered with no tokenizer to train or download.

- X->English (many-to-one): source ``[<lang> x-bytes <eos>]``, target ``[<bos> en-bytes <eos>]``.
- English->X (one-to-many): source ``[<lang> en-bytes <eos>]``, target ``[<lang> x-bytes <eos>]``
  (the target language tag starts decoding, so greedy decoding knows which language to write).

One embedding matrix is shared by source, target and the output projection (tied weights: a
quarter of the parameters at d=128 would otherwise sit in three copies of a 280 x d table).
Positions are learned. Pre-norm layers (``norm_first``) train stably without a long warmup.
Parameter names follow the ``all_layer`` granularity: ``encoder.layers.<i>``,
``decoder.layers.<i>``, ``embed``, ``pos``, ``encoder.norm``, ``decoder.norm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

PAD, BOS, EOS = 256, 257, 258
FIRST_TAG = 259


def vocab_size(num_languages: int) -> int:
    return FIRST_TAG + num_languages


def decode_bytes(ids: Sequence[int]) -> str:
    """Bytes up to the first EOS/PAD back to text (invalid UTF-8 dropped, tags skipped)."""
    out = bytearray()
    for i in ids:
        if i in (EOS, PAD):
            break
        if i < 256:
            out.append(i)
    return out.decode("utf-8", errors="ignore")


class ByteTransformer(nn.Module):
    """Encoder-decoder over bytes: ``forward(src, tgt_in) -> logits [B, T, V]``.

    ``src`` [B, S] and ``tgt_in`` [B, T] are int64 with PAD padding on the right.
    """

    def __init__(
        self,
        num_languages: int,
        d_model: int = 128,
        nhead: int = 4,
        enc_layers: int = 2,
        dec_layers: int = 2,
        d_ff: int = 512,
        dropout: float = 0.1,
        max_len: int = 128,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size(num_languages), d_model, padding_idx=PAD)
        self.pos = nn.Embedding(max_len, d_model)
        enc_layer = nn.TransformerEncoderLayer(
            d_model, nhead, d_ff, dropout, batch_first=True, norm_first=True
        )
        dec_layer = nn.TransformerDecoderLayer(
            d_model, nhead, d_ff, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            enc_layer, enc_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(dec_layer, dec_layers, norm=nn.LayerNorm(d_model))
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        # sqrt(d) scaling: embeddings initialised at std d^-1/2 enter the residual stream at ~1.
        return self.drop(self.embed(ids) * math.sqrt(self.d_model) + self.pos(positions))

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory [B, S, d] and the source padding mask [B, S] (True = pad)."""
        src_pad = src == PAD
        return self.encoder(self._embed(src), src_key_padding_mask=src_pad), src_pad

    def decode(
        self, tgt_in: torch.Tensor, memory: torch.Tensor, src_pad: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, T, V] of the next byte at every target position (causal)."""
        t = tgt_in.shape[1]
        causal = torch.triu(
            torch.ones(t, t, dtype=torch.bool, device=tgt_in.device), diagonal=1
        )  # True = may not attend (a future position)
        h = self.decoder(
            self._embed(tgt_in),
            memory,
            tgt_mask=causal,
            tgt_key_padding_mask=tgt_in == PAD,
            memory_key_padding_mask=src_pad,
        )
        return h @ self.embed.weight.T

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, src_pad = self.encode(src)
        return self.decode(tgt_in, memory, src_pad)


def _decoder_step(
    layer: nn.TransformerDecoderLayer,
    x: torch.Tensor,
    cache: list[torch.Tensor],
    memory: torch.Tensor,
    src_pad: torch.Tensor,
) -> torch.Tensor:
    """One pre-norm decoder layer on the newest position only, with the layer's normed inputs
    of earlier positions in ``cache`` (the keys/values of causal self-attention): what
    ``layer(...)`` computes at the last position, in O(t) instead of O(t^2) per new token."""
    h = layer.norm1(x)
    cache.append(h)
    past = torch.cat(cache, dim=1)
    x = x + layer.self_attn(h, past, past, need_weights=False)[0]
    h = layer.norm2(x)
    x = x + layer.multihead_attn(h, memory, memory, key_padding_mask=src_pad, need_weights=False)[0]
    return x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))


@torch.no_grad()
def greedy_decode(
    model: ByteTransformer, src: torch.Tensor, start: torch.Tensor, max_len: int
) -> torch.Tensor:
    """Greedy decoding of a whole batch at once, vectorised over rows, with a per-layer cache.

    ``start`` [B] is each row's first target token (BOS or the target language tag). Returns
    [B, <= max_len] generated ids (after ``start``); rows that emitted EOS continue with PAD.
    Call with the model in eval mode (dropout off); the result equals re-running
    ``model.decode`` on the growing prefix and taking the argmax of the last position.
    """
    memory, src_pad = model.encode(src)
    layers = list(model.decoder.layers)
    caches: list[list[torch.Tensor]] = [[] for _ in layers]
    token = start.view(-1, 1)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    out = []
    limit = min(max_len, model.max_len - 1)
    for t in range(limit):
        pos = model.pos.weight[t]
        x = model.embed(token) * math.sqrt(model.d_model) + pos
        for layer, cache in zip(layers, caches, strict=True):
            x = _decoder_step(layer, x, cache, memory, src_pad)
        logits = model.decoder.norm(x)[:, -1] @ model.embed.weight.T
        logits[:, PAD] = logits[:, BOS] = float("-inf")  # never generated: only bytes or EOS
        logits[:, FIRST_TAG:] = float("-inf")
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        out.append(nxt)
        done |= nxt == EOS
        if bool(done.all()):
            break
        token = nxt.view(-1, 1)
    return torch.stack(out, dim=1)
