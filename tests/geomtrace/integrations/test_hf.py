"""GeomtraceTrainer: a real Hugging Face Trainer run (tiny random BERT, byte ids) on Django strings."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import geomtrace as gt  # noqa: E402
from geomtrace import MultiTask, PCGrad, Sum  # noqa: E402
from geomtrace.integrations.hf import GeomtraceTrainer, TaskCollator  # noqa: E402

LENGTH = 24
PAD, CLS, SEP, MASK, OFFSET = 0, 1, 2, 3, 4


def encode(text: str) -> dict:
    """Byte-level ids with deterministic masking: every third content position is predicted."""
    ids = [CLS] + [b + OFFSET for b in text.encode()[: LENGTH - 2]] + [SEP]
    labels = [-100] * len(ids)
    inputs = list(ids)
    for p in range(1, len(ids) - 1):
        if p % 3 == 1:
            labels[p], inputs[p] = ids[p], MASK
    pad = LENGTH - len(ids)
    return {
        "input_ids": inputs + [PAD] * pad,
        "attention_mask": [1] * len(ids) + [0] * pad,
        "labels": labels + [-100] * pad,
    }


def examples(strings: dict[str, list[str]]) -> list[dict]:
    return [{**encode(t), "task": lang} for lang, texts in strings.items() for t in texts]


def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=256 + OFFSET,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=LENGTH,
        hidden_dropout_prob=0.0,  # dropout would draw different masks per sub-batch
        attention_probs_dropout_prob=0.0,
    )
    return BertForMaskedLM(config)


def args(tmp_path, **overrides):
    from transformers import TrainingArguments

    values = dict(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=1e-3,
        seed=0,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        optim="adamw_torch",
    )
    values.update(overrides)
    return TrainingArguments(**values)


def plain_run(tmp_path, data, **overrides):
    """The same training with the stock Trainer (the task column is dropped as unused)."""
    from transformers import Trainer

    model = tiny_bert()
    Trainer(model=model, args=args(tmp_path, **overrides), train_dataset=data).train()
    return model


def assert_same_parameters(a, b, atol=1e-5):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=atol, rtol=0), (name, (p - q).abs().max().item())


def test_tracer_matches_plain_trainer_and_traces_every_language(tmp_path, multilingual):
    data = examples(multilingual)
    langs = list(multilingual)
    model = tiny_bert()
    tracer = gt.Tracer(model, tasks=langs, groups="all_layer", every=1, out=tmp_path / "run")
    trainer = GeomtraceTrainer(
        model=model,
        args=args(tmp_path),
        train_dataset=data,
        data_collator=TaskCollator(langs),
        tracer=tracer,
    )
    result = trainer.train()
    tracer.close()

    plain = plain_run(tmp_path, data)
    assert_same_parameters(model, plain)
    # Evaluation ignores the task column: the same eval loss as the stock Trainer's.
    from transformers import Trainer

    ours = trainer.evaluate(eval_dataset=data[::4])["eval_loss"]
    theirs = Trainer(model=plain, args=args(tmp_path)).evaluate(eval_dataset=data[::4])
    assert math.isclose(ours, theirs["eval_loss"], rel_tol=1e-5)
    trace = gt.open_trace(tmp_path / "run")
    assert trace.tasks == langs
    np.testing.assert_array_equal(trace.steps, [0, 1, 2, 3])
    # 32 rows in batches of 8: four steps see every example once, so every language is traced.
    losses = trace.losses()
    assert set(losses.task) == set(langs)
    # The per-task losses are contributions that add up to the batch loss the Trainer logged.
    per_step = losses.groupby("step").loss.sum().to_numpy()
    assert math.isclose(per_step.mean(), result.training_loss, rel_tol=1e-5)
    assert {"bert.encoder.layer.0", "bert.encoder.layer.1"} <= set(trace.groups)
    for group in trace.groups:
        diag = np.diagonal(trace.gram(group), axis1=1, axis2=2)
        present = ~np.isnan(diag)
        assert present.any(axis=0).all()  # every language has a gradient at some step
        assert (diag[present] > 0).all()


def test_multitask_sum_with_accumulation_matches_plain_trainer(tmp_path, multilingual):
    """Gradient accumulation and a model without loss kwargs: the mean-loss weighting path."""
    data = examples(multilingual)
    langs = list(multilingual)
    model = tiny_bert()
    model.accepts_loss_kwargs = False  # Trainer then scales each micro-batch's mean itself
    tracer = gt.Tracer(model, tasks=langs, every=[0, 1], out=tmp_path / "run")
    mt = MultiTask(model, tasks=langs, aggregator=Sum(), tracer=tracer)
    over = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=3)
    trainer = GeomtraceTrainer(
        model=model,
        args=args(tmp_path, **over),
        train_dataset=data,
        data_collator=TaskCollator(langs),
        multitask=mt,
    )
    trainer.train()
    tracer.close()

    reference = tiny_bert()
    reference.accepts_loss_kwargs = False
    from transformers import Trainer

    Trainer(model=reference, args=args(tmp_path, **over), train_dataset=data).train()
    assert_same_parameters(model, reference)
    trace = gt.open_trace(tmp_path / "run")
    np.testing.assert_array_equal(trace.steps, [0, 1])  # one snapshot per optimizer update
    weights = trace.array("weights")[:, 0]  # [S, K] of the one group
    present = ~np.isnan(np.diagonal(trace.gram("whole_model"), axis1=1, axis2=2))
    np.testing.assert_array_equal(weights[present], 1.0)  # Sum: every present task weighs 1
    np.testing.assert_array_equal(weights[~present], 0.0)


def test_pcgrad_trainer_matches_a_hand_written_loop(tmp_path, multilingual):
    """The Trainer with MultiTask(PCGrad) applies exactly what a plain loop with it applies."""
    data = examples(multilingual)
    langs = list(multilingual)
    over = dict(train_sampling_strategy="sequential", max_grad_norm=0.0, max_steps=4)

    model = tiny_bert()
    tracer = gt.Tracer(model, tasks=langs, groups="all_layer", every=1, out=tmp_path / "run")
    mt = MultiTask(model, langs, aggregator=PCGrad(seed=0), groups="all_layer", tracer=tracer)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    const = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    GeomtraceTrainer(
        model=model,
        args=args(tmp_path, **over),
        train_dataset=data,
        data_collator=TaskCollator(langs),
        multitask=mt,
        optimizers=(opt, const),
    ).train()
    tracer.close()

    reference = tiny_bert()
    ref_mt = MultiTask(reference, langs, aggregator=PCGrad(seed=0), groups="all_layer")
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    collate = TaskCollator(langs)
    for step in range(4):
        batch = collate(data[8 * step : 8 * step + 8])
        task_ids = batch.pop("task")
        total_items = batch["labels"].ne(-100).sum()
        with ref_mt.step(step) as s:
            for t, task in enumerate(langs):
                rows = (task_ids == t).nonzero().squeeze(1)
                if len(rows) == 0:
                    continue
                sub = {k: v[rows] for k, v in batch.items()}
                items = sub["labels"].ne(-100).sum()
                s.backward(task, reference(**sub).loss * items / total_items)
        ref_opt.step()
        ref_opt.zero_grad()

    assert_same_parameters(model, reference)
    weights = gt.open_trace(tmp_path / "run").array("weights")
    assert weights.shape == (4, len(tracer.groups), len(langs))
    # Sequential batches hold one or two languages; where two conflict, PCGrad reweights.
    finite = weights[~np.isnan(weights)]
    assert (finite != 1.0).any()


def test_errors_name_the_fix(tmp_path, multilingual):
    langs = list(multilingual)
    model = tiny_bert()
    tracer = gt.Tracer(model, tasks=langs)
    with pytest.raises(gt.InvalidInputError, match="exactly one"):
        GeomtraceTrainer(
            model=model,
            args=args(tmp_path),
            tracer=tracer,
            multitask=MultiTask(model, langs, Sum()),
        )
    with pytest.raises(gt.InvalidInputError, match="wrong tasks"):
        GeomtraceTrainer(
            model=model,
            args=args(tmp_path),
            data_collator=TaskCollator(langs[::-1]),
            tracer=tracer,
        )
    collate = TaskCollator(langs)
    with pytest.raises(gt.InvalidInputError, match="unknown task 'xx'"):
        collate([{**encode("hallo"), "task": "xx"}])
    with pytest.raises(gt.InvalidInputError, match="no 'task' key"):
        collate([encode("hallo")])
    plain = examples({"de": multilingual["de"]})
    for row in plain:
        del row["task"]
    trainer = GeomtraceTrainer(
        model=model, args=args(tmp_path, max_steps=1), train_dataset=plain, tracer=tracer
    )
    with pytest.raises(gt.InvalidInputError, match="TaskCollator"):
        trainer.train()


def test_causal_lm_dividing_by_num_items_matches_plain_trainer(tmp_path, multilingual):
    """A loss that divides by the Trainer's num_items_in_batch (GPT-2): task losses add as they are."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer

    def tiny_gpt2():
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=256 + OFFSET, n_positions=LENGTH, n_embd=16, n_layer=2, n_head=2,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        return GPT2LMHeadModel(config)

    data = []
    for lang, texts in multilingual.items():
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
    langs = list(multilingual)
    over = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=3)
    model = tiny_gpt2()
    tracer = gt.Tracer(model, tasks=langs, every=1)
    trainer = GeomtraceTrainer(
        model=model,
        args=args(tmp_path, **over),
        train_dataset=data,
        data_collator=TaskCollator(langs),
        tracer=tracer,
    )
    trainer.train()
    assert trainer._loss_divides_by_items is True  # the path this test is about
    reference = tiny_gpt2()
    Trainer(model=reference, args=args(tmp_path, **over), train_dataset=data).train()
    assert_same_parameters(model, reference)
    assert tracer.last_gram.shape == (1, 4, 4)


def seq2seq_examples(strings: dict[str, list[str]]) -> list[dict]:
    """Byte-level copying of each string's first 8 bytes (labels of one length: no padding)."""
    data = []
    for lang, texts in strings.items():
        for text in texts:
            ids = [b + OFFSET for b in text.encode()[:LENGTH]]
            pad = LENGTH - len(ids)
            data.append(
                {
                    "input_ids": ids + [PAD] * pad,
                    "attention_mask": [1] * len(ids) + [0] * pad,
                    "labels": [b + OFFSET for b in text.encode().ljust(8)[:8]] + [SEP],
                    "task": lang,
                }
            )
    return data


def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=256 + OFFSET, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        dropout_rate=0.0, pad_token_id=PAD, eos_token_id=SEP, decoder_start_token_id=PAD,
    )  # fmt: skip
    return T5ForConditionalGeneration(config)


def test_seq2seq_trainer_keeps_its_generation_through_the_mixin(tmp_path, multilingual):
    """A Seq2SeqTrainer user adds geomtrace with the mixin: training equals the plain
    Seq2SeqTrainer's, and evaluation still generates (predict_with_generate)."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from geomtrace.integrations.hf import GeomtraceMixin, with_geometry

    class GeometrySeq2Seq(GeomtraceMixin, Seq2SeqTrainer):
        pass

    data = seq2seq_examples(multilingual)
    langs = list(multilingual)

    def seq2seq_args():
        values = dict(
            output_dir=str(tmp_path / "s2s"), per_device_train_batch_size=8, max_steps=3,
            learning_rate=1e-2, seed=0, report_to="none", save_strategy="no",
            logging_strategy="no", use_cpu=True, disable_tqdm=True, optim="adamw_torch",
            predict_with_generate=True, generation_max_length=10,
            per_device_eval_batch_size=8,
        )  # fmt: skip
        return Seq2SeqTrainingArguments(**values)

    model = tiny_t5()
    tracer = gt.Tracer(model, tasks=langs, groups="enc_dec", every=1, out=tmp_path / "run")
    ours = GeometrySeq2Seq(
        model=model,
        args=seq2seq_args(),
        train_dataset=data,
        data_collator=TaskCollator(langs),
        tracer=tracer,
    )
    ours.train()
    tracer.close()
    plain_model = tiny_t5()
    plain = Seq2SeqTrainer(model=plain_model, args=seq2seq_args(), train_dataset=data)
    plain.train()
    assert_same_parameters(model, plain_model)

    # Generation-based evaluation goes through the trainer's own prediction_step.
    held_out = data[::4]
    predicted = ours.predict(held_out).predictions
    expected = plain.predict(held_out).predictions
    assert predicted.shape[0] == len(held_out) and predicted.shape[1] > 2  # generated tokens
    np.testing.assert_array_equal(predicted, expected)

    trace = gt.open_trace(tmp_path / "run")
    np.testing.assert_array_equal(trace.steps, [0, 1, 2])
    assert {"encoder", "decoder"} <= set(trace.groups)
    assert isinstance(ours, Seq2SeqTrainer)
    # with_geometry builds the same composition for any Trainer subclass.
    built = with_geometry(Seq2SeqTrainer)
    assert built.__mro__[1:3] == (GeomtraceMixin, Seq2SeqTrainer)
    assert with_geometry(built) is built
    with pytest.raises(gt.InvalidInputError, match="Trainer subclass"):
        with_geometry(torch.nn.Module)


def test_trl_sft_trainer_through_the_mixin_matches_plain_sft(tmp_path, multilingual):
    """TRL's SFTTrainer (its own loss, metrics and collator) with the mixin trains exactly as
    the plain SFTTrainer does, on batches that mix languages."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from geomtrace.integrations.hf import with_geometry

    langs = list(multilingual)
    # Languages interleaved: each sequential batch of 8 holds two rows of every language.
    rows = [
        {"input_ids": [b + OFFSET for b in multilingual[lang][n].encode()[:LENGTH]], "task": lang}
        for n in range(8)
        for lang in langs
    ]
    dataset = Dataset.from_list(rows)
    vocab = {f"<{i}>": i for i in range(256 + OFFSET)}  # byte ids: a tokenizer without files
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=f"<{MASK}>")),
        pad_token=f"<{PAD}>", eos_token=f"<{SEP}>", unk_token=f"<{MASK}>",
    )  # fmt: skip

    def tiny_gpt2():
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=256 + OFFSET, n_positions=LENGTH + 2, n_embd=16, n_layer=2, n_head=2,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=CLS,
            eos_token_id=SEP, pad_token_id=PAD,
        )  # fmt: skip
        return GPT2LMHeadModel(config)

    def config():
        return SFTConfig(
            output_dir=str(tmp_path / "sft"), per_device_train_batch_size=8, max_steps=3,
            optim="sgd", learning_rate=0.5, bf16=False, report_to="none", save_strategy="no", logging_strategy="no",
            use_cpu=True, disable_tqdm=True, train_sampling_strategy="sequential",
            max_length=LENGTH + 2, seed=0,
        )  # fmt: skip

    model = tiny_gpt2()
    tracer = gt.Tracer(model, langs, every=1, out=tmp_path / "run")
    collator = TaskCollator(langs, collator=DataCollatorForLanguageModeling(pad_token_id=PAD))
    ours = with_geometry(SFTTrainer)(
        model=model,
        args=config(),
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator,
        tracer=tracer,
    )
    ours.train()
    tracer.close()
    reference = tiny_gpt2()
    SFTTrainer(
        model=reference, args=config(), train_dataset=dataset, processing_class=tokenizer
    ).train()
    assert ours._loss_divides_by_items is True  # SFT's loss divides by the token count
    # fp32 (SFTConfig defaults to bf16 autocast, whose rounding differs between one batch and
    # its per-language parts) and SGD (Adam's first steps are near sign(g), which turns the
    # float rounding of gradients near 0 into differences of 2 lr).
    assert_same_parameters(model, reference)
    moved = model.transformer.h[0].mlp.c_proj.bias
    assert not torch.allclose(moved, tiny_gpt2().transformer.h[0].mlp.c_proj.bias, atol=1e-2)
    trace = gt.open_trace(tmp_path / "run")
    np.testing.assert_array_equal(trace.steps, [0, 1, 2])
    assert np.isfinite(trace.gram("whole_model")).all()  # every language in every batch
