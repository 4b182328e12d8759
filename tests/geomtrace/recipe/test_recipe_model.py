"""The byte-level Transformer: cached greedy decoding equals full recomputation; the fused
joint loss has exactly the gradient of the per-task losses."""

import torch

from geomtrace.recipe.config import RecipeConfig
from geomtrace.recipe.embedded import make_recipe
from geomtrace.recipe.model import (
    BOS,
    EOS,
    FIRST_TAG,
    PAD,
    ByteTransformer,
    decode_bytes,
    greedy_decode,
)


def test_decode_bytes():
    assert decode_bytes([*"héllo".encode(), EOS, 65]) == "héllo"
    assert decode_bytes([FIRST_TAG, 0x41, 0xFF, PAD, 0x42]) == "A"  # tag skipped, bad byte dropped


def test_cached_greedy_decoding_equals_full_recompute():
    torch.manual_seed(0)
    model = ByteTransformer(3, d_model=32, nhead=4, d_ff=64, max_len=24).eval()
    for p in model.parameters():  # large random weights: varied, non-trivial outputs
        torch.nn.init.normal_(p, std=0.3)
    src = torch.randint(0, 256, (6, 10))
    src[2, 6:] = PAD
    start = torch.tensor([BOS, BOS, FIRST_TAG, FIRST_TAG + 1, BOS, FIRST_TAG + 2])
    fast = greedy_decode(model, src, start, max_len=20)
    with torch.no_grad():
        memory, src_pad = model.encode(src)
        ys, slow, done = start.view(-1, 1), [], torch.zeros(6, dtype=torch.bool)
        for _ in range(fast.shape[1]):
            logits = model.decode(ys, memory, src_pad)[:, -1]
            logits[:, PAD] = logits[:, BOS] = float("-inf")
            logits[:, FIRST_TAG:] = float("-inf")
            nxt = torch.where(done, torch.full((6,), PAD), logits.argmax(-1))
            done |= nxt == EOS
            slow.append(nxt)
            ys = torch.cat([ys, nxt.view(-1, 1)], 1)
    assert torch.equal(fast, torch.stack(slow, 1))
    assert len(set(fast.flatten().tolist())) >= 3  # rows differ: the source matters
    assert fast.max() < FIRST_TAG and not (fast == BOS).any()


def test_joint_loss_gradient_equals_sum_of_task_gradients():
    torch.manual_seed(0)
    config = RecipeConfig(langs=["es", "ru", "ja"], d_model=32, d_ff=64, dropout=0.0)
    recipe, _ = make_recipe(config)
    model = recipe.model
    batches = recipe.sample(0, torch.Generator().manual_seed(1))
    for lang in recipe.tasks:
        recipe.loss(model, lang, batches[lang]).backward()
    per_task = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    losses = recipe.joint_loss(model, batches)
    sum(losses.values()).backward()
    for a, p in zip(per_task, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)
    for lang in recipe.tasks:
        torch.testing.assert_close(
            losses[lang], recipe.loss(model, lang, batches[lang]), rtol=1e-5, atol=1e-6
        )


def test_bucketed_batches_are_seeded_and_short():
    config = RecipeConfig(langs=["es", "hi"], d_model=32, d_ff=64, batch_per_lang=6)
    recipe, counts = make_recipe(config)
    a = recipe.sample(3, torch.Generator().manual_seed(7))
    b = recipe.sample(3, torch.Generator().manual_seed(7))
    for lang in ("es", "hi"):
        assert torch.equal(a[lang][0], b[lang][0]) and torch.equal(a[lang][1], b[lang][1])
        src, tgt = a[lang]
        assert src.shape[0] == 6 and src.shape[1] <= config.max_bytes + 2
        assert (src[:, 0] >= FIRST_TAG).all() and (tgt[:, 0] == BOS).all()  # x2en
        assert (src != PAD).any(0).all()  # trimmed: no all-padding column
    assert counts["es"]["train"] > counts["hi"]["train"]  # Devanagari: 3 bytes a character
