import pytest
import torch
from torch import nn

from geomtrace import InvalidInputError, resolve_groups


def _names(groups):
    return [n for g in groups for n in g.param_names]


@pytest.mark.parametrize("granularity", ["whole_model", "enc_dec", "all_layer", "all_matrix"])
def test_every_granularity_partitions_the_trainable_parameters(tiny_seq2seq, granularity):
    groups = resolve_groups(tiny_seq2seq, granularity)
    expected = [n for n, _ in tiny_seq2seq.named_parameters()]
    assert sorted(_names(groups)) == sorted(expected)
    assert len(_names(groups)) == len(set(_names(groups)))  # each in exactly one group
    for g in groups:
        assert g.numel == sum(p.numel() for p in g.params)
        named = dict(tiny_seq2seq.named_parameters())
        assert all(named[n] is p for n, p in zip(g.param_names, g.params, strict=True))


def test_enc_dec_splits_by_name_and_keeps_the_rest(tiny_seq2seq):
    groups = {g.name: g for g in resolve_groups(tiny_seq2seq, "enc_dec")}
    assert list(groups) == ["rest", "encoder", "decoder"]  # model order: embed comes first
    assert set(groups["rest"].param_names) == {"embed.weight", "out.weight", "out.bias"}
    assert all(".encoder." in n for n in groups["encoder"].param_names)
    assert all(".decoder." in n for n in groups["decoder"].param_names)


def test_all_layer_is_one_group_per_indexed_block_or_owning_module(tiny_seq2seq):
    names = [g.name for g in resolve_groups(tiny_seq2seq, "all_layer")]
    assert names == [
        "embed",
        "transformer.encoder.layers.0",
        "transformer.encoder.layers.1",
        "transformer.encoder.norm",
        "transformer.decoder.layers.0",
        "transformer.decoder.layers.1",
        "transformer.decoder.norm",
        "out",
    ]


def test_all_matrix_is_one_group_per_tensor(tiny_seq2seq):
    groups = resolve_groups(tiny_seq2seq, "all_matrix")
    assert [g.name for g in groups] == [n for n, _ in tiny_seq2seq.named_parameters()]
    assert all(len(g.params) == 1 for g in groups)


def test_regex_groups_with_rest(tiny_seq2seq):
    groups = resolve_groups(tiny_seq2seq, {"attn": r"attn", "ffn": r"linear[12]"})
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"attn", "ffn", "rest"}
    assert "embed.weight" in by_name["rest"].param_names
    assert all("attn" in n for n in by_name["attn"].param_names)


def test_overlapping_regexes_name_both_groups(tiny_seq2seq):
    with pytest.raises(InvalidInputError, match=r"'enc'.*'attn'|'attn'.*'enc'"):
        resolve_groups(tiny_seq2seq, {"enc": r"encoder", "attn": r"self_attn"})


def test_regex_matching_nothing_and_bad_regex_are_errors(tiny_seq2seq):
    with pytest.raises(InvalidInputError, match="'lstm'"):
        resolve_groups(tiny_seq2seq, {"lstm": r"lstm"})
    with pytest.raises(InvalidInputError, match="bad regex"):
        resolve_groups(tiny_seq2seq, {"x": r"("})


def test_frozen_parameters_are_left_out(tiny_seq2seq):
    tiny_seq2seq.embed.weight.requires_grad_(False)
    groups = resolve_groups(tiny_seq2seq, "whole_model")
    assert "embed.weight" not in groups[0].param_names
    assert groups[0].numel == sum(p.numel() for p in tiny_seq2seq.parameters() if p.requires_grad)


def test_bad_granularity_and_models_without_encoder_decoder():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(InvalidInputError, match="'layers'.*whole_model, enc_dec"):
        resolve_groups(model, "layers")
    with pytest.raises(InvalidInputError, match="neither"):
        resolve_groups(model, "enc_dec")
    assert [g.name for g in resolve_groups(model, "all_layer")] == ["0", "2"]
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(InvalidInputError, match="no trainable"):
        resolve_groups(frozen, "whole_model")
    with pytest.raises(InvalidInputError, match="mapping"):
        resolve_groups(model, 3)
    assert torch.is_grad_enabled()


def test_the_whole_model_name_all_is_reserved(tmp_path):
    """Issue 19, defect 6: a group named 'all' shadowed the whole-model pseudo-group (the
    reader's gram('all') returned the user's subset, inspect listed 'all' twice)."""
    import geomtrace as gt

    model = nn.Sequential()
    model.add_module("all", nn.Linear(3, 2))
    model.add_module("head", nn.Linear(2, 1))
    with pytest.raises(
        InvalidInputError, match=r"group name 'all' is reserved for the whole model"
    ):
        resolve_groups(model, {"all": r"^all\.", "head": r"^head\."})
    for granularity in ("all_layer", "all_matrix"):
        # all_layer names the group after the module 'all'; all_matrix after a root parameter
        m = model if granularity == "all_layer" else nn.Module()
        if granularity == "all_matrix":
            m.register_parameter("all", nn.Parameter(torch.zeros(2)))
        with pytest.raises(InvalidInputError, match=r"'all' is reserved.*parameter 'all"):
            resolve_groups(m, granularity)
    with pytest.raises(InvalidInputError, match="'all' is reserved"):
        gt.Tracer(model, ["a", "b"], groups={"all": "all", "head": "head"})
    with pytest.raises(InvalidInputError, match="'all' is reserved"):
        gt.TraceWriter(tmp_path, ["a", "b"], [("all", 3, ["x"])])
    assert not (tmp_path / "trace.sqlite").exists()
    assert [g.name for g in resolve_groups(model, "whole_model")] == ["whole_model"]
