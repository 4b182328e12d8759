"""Parameter groups: which parameters each Gram matrix (and each aggregation) covers.

A *group* is a named, ordered set of trainable parameters. Gradient similarity is computed per
group: for group k with task gradients g_i restricted to its parameters, G_k = [g_i . g_j].

Granularities (the paper's, from coarse to fine):

- ``"whole_model"``: one group, every trainable parameter.
- ``"enc_dec"``: ``"encoder"`` / ``"decoder"`` by parameter name: a parameter belongs to the
  encoder (decoder) when a component of its dotted name contains ``encoder`` (``decoder``); the
  first such component wins. Parameters in neither (embeddings, output projection) form ``"rest"``.
  A model with no encoder and no decoder parameters is an error.
- ``"all_layer"``: one group per *layer*. The layer of a parameter is its dotted name up to and
  including the first purely numeric component (the index into a ``ModuleList``/``Sequential``),
  e.g. ``encoder.layers.3.self_attn.in_proj_weight`` -> ``encoder.layers.3``. A parameter with no
  numeric component belongs to the module that owns it (its name without the last component),
  e.g. ``embed.weight`` -> ``embed``; a parameter registered on the root module is its own group.
- ``"all_matrix"``: one group per parameter tensor, named by the parameter's name.
- A mapping ``{group name: regex}``: a parameter joins the group whose regex matches its name
  (``re.search``). A parameter matched by two regexes is an error naming both; unmatched
  parameters go to a group named ``"rest"``; a regex that matches nothing is an error.

The name ``"all"`` is reserved for the whole model (the sum over the groups, in the reader and
every command): a group of that name, given or derived from a module or parameter name, is
refused.

Frozen parameters (``requires_grad=False``) are left out. Groups come in model order: the order
in which their first parameter appears in ``model.named_parameters()``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from geomtrace._errors import InvalidInputError
from geomtrace._format import ALL_GROUPS, check_group_name

GRANULARITIES = ("whole_model", "enc_dec", "all_layer", "all_matrix")
REST_GROUP = "rest"


@dataclass(frozen=True)
class ParameterGroup:
    """A named set of parameters whose task gradients share one Gram matrix."""

    name: str
    param_names: list[str]
    params: list[nn.Parameter] = field(repr=False)
    numel: int


def resolve_groups(model: nn.Module, groups: str | Mapping[str, str]) -> list[ParameterGroup]:
    """Partition ``model``'s trainable parameters into groups (see the module docstring).

    Returns the groups in model order; every trainable parameter is in exactly one group.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise InvalidInputError("the model has no trainable parameters (all requires_grad=False)")
    if isinstance(groups, str):
        if groups not in GRANULARITIES:
            raise InvalidInputError(
                f"unknown groups {groups!r}: use one of {', '.join(GRANULARITIES)} "
                "or a mapping of group names to regexes"
            )
        assign = {
            "whole_model": lambda name: "whole_model",
            "enc_dec": _encoder_or_decoder,
            "all_layer": _layer_of,
            "all_matrix": lambda name: name,
        }[groups]
        labels = [assign(name) for name, _ in named]
        if groups == "enc_dec" and set(labels) == {REST_GROUP}:
            raise InvalidInputError(
                "groups='enc_dec' needs parameters whose names contain 'encoder' or 'decoder'; "
                f"this model has neither (first names: {', '.join(n for n, _ in named[:5])})"
            )
    elif isinstance(groups, Mapping):
        labels = _labels_from_regexes(named, groups)
    else:
        raise InvalidInputError(
            f"groups must be one of {', '.join(GRANULARITIES)} or a mapping name -> regex, "
            f"not {type(groups).__name__}"
        )
    members: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for label, (name, p) in zip(labels, named, strict=True):
        members.setdefault(label, []).append((name, p))
    if ALL_GROUPS in members:
        first = members[ALL_GROUPS][0][0]
        check_group_name(
            ALL_GROUPS,
            f" and groups={groups!r} derives it from parameter {first!r} (rename that module "
            "or parameter, or pass a mapping {name: regex})",
        )
    return [
        ParameterGroup(
            name=label,
            param_names=[n for n, _ in items],
            params=[p for _, p in items],
            numel=sum(p.numel() for _, p in items),
        )
        for label, items in members.items()
    ]


def _encoder_or_decoder(name: str) -> str:
    for part in name.split("."):
        if "encoder" in part:
            return "encoder"
        if "decoder" in part:
            return "decoder"
    return REST_GROUP


def _layer_of(name: str) -> str:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def _labels_from_regexes(named, patterns: Mapping[str, str]) -> list[str]:
    if not patterns:
        raise InvalidInputError("groups mapping is empty: give at least one name -> regex")
    compiled = {}
    for group_name, pattern in patterns.items():
        check_group_name(group_name)
        if group_name == REST_GROUP:
            raise InvalidInputError(
                f"group name {REST_GROUP!r} is reserved for unmatched parameters"
            )
        try:
            compiled[group_name] = re.compile(pattern)
        except re.error as err:
            raise InvalidInputError(f"group {group_name!r}: bad regex {pattern!r}: {err}") from None
    labels, used = [], set()
    for name, _ in named:
        hits = [g for g, rx in compiled.items() if rx.search(name)]
        if len(hits) > 1:
            raise InvalidInputError(
                f"parameter {name!r} matches the regexes of groups {hits[0]!r} "
                f"({patterns[hits[0]]!r}) and {hits[1]!r} ({patterns[hits[1]]!r}); "
                "each parameter must belong to exactly one group"
            )
        label = hits[0] if hits else REST_GROUP
        used.add(label)
        labels.append(label)
    unused = [g for g in compiled if g not in used]
    if unused:
        raise InvalidInputError(
            f"group {unused[0]!r} (regex {patterns[unused[0]]!r}) matches no trainable parameter"
        )
    return labels
