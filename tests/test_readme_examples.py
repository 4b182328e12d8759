"""Every ```python example of the READMEs and docs runs (issue 20).

The blocks of one document run in order in one namespace (a later block uses the names of an
earlier one, as a reader does), in a temporary working directory, seeded. The names the prose
leaves to the reader are given by the test from real parts before the first block that uses
them (``GIVEN``): a small model whose layers are ``encoder.layers.0`` and ``encoder.layers.1``,
three languages, a loader of ``{task: batch}``, ``loss_fn(model, batch)`` and an SGD optimizer;
a tiny random BERT and a dataset of Django strings for the Hugging Face block (as
``examples/hf_trainer.py``); planted traces for the figures README (as ``tests/figures``); a
one-process gloo group for the torch.distributed blocks. A block that cannot run here is
preceded in its markdown by ``<!-- not-executed: reason -->`` (rare, with the reason), which
this test honours and counts.
"""

from __future__ import annotations

import importlib.util
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import geomtrace as gt

ROOT = Path(__file__).resolve().parent.parent
#: the documents whose examples must run (every markdown file with a ```python block)
DOCUMENTS = [
    "README.md",
    "geomtrace/recipe/README.md",
    "analyses/README.md",
    "figures/README.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_EXECUTED = re.compile(r"<!--\s*not-executed:\s*(.+?)\s*-->\s*$")
LANGS = ["es", "ja", "de"]


@dataclass
class Block:
    document: str
    line: int
    code: str
    not_executed: str | None  # the reason given in the markdown, or None


def python_blocks(document: str) -> list[Block]:
    text = (ROOT / document).read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        reason = NOT_EXECUTED.search(before)
        line = text.count("\n", 0, match.start()) + 2  # the block's first line of code
        blocks.append(Block(document, line, match.group(1), reason and reason.group(1)))
    return blocks


# -- what the prose leaves to the reader ----------------------------------------------------
class Encoder(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, 8), nn.Linear(8, width)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


class Net(nn.Module):
    """Parameters ``encoder.layers.{0,1}.*`` and ``head.*`` (groups of ``"all_layer"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def training_loop(namespace: dict, model: nn.Module, out_width: int, steps: int = 3) -> None:
    """``model``, ``langs``/``tasks``, ``loader`` (``steps`` steps of ``{task: batch}``, each
    task its own input shift), ``loss_fn`` (mean squared error) and ``optimizer`` (SGD)."""
    generator = torch.Generator().manual_seed(0)
    loader = [
        {
            lang: {
                "x": torch.randn(6, 4, generator=generator) + i,
                "y": torch.randn(6, out_width, generator=generator),
            }
            for i, lang in enumerate(LANGS)
        }
        for _ in range(steps)
    ]
    namespace.update(
        gt=gt,
        torch=torch,
        nn=nn,
        model=model,
        langs=list(LANGS),
        tasks=list(LANGS),
        loader=loader,
        loss_fn=lambda model, batch: nn.functional.mse_loss(model(batch["x"]), batch["y"]),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
    )


def given_training_loop(namespace: dict, monkeypatch) -> None:
    torch.manual_seed(0)
    training_loop(namespace, Net(), out_width=1)


def given_hugging_face(namespace: dict, monkeypatch) -> None:
    """A tiny random BERT and 8 Django strings per language, encoded as examples/hf_trainer.py."""
    from transformers import BertConfig, BertForMaskedLM, TrainingArguments

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from _data import django_strings
    from hf_trainer import LENGTH, OFFSET, encode

    strings = django_strings(namespace["langs"], 8)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=256 + OFFSET, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=LENGTH)  # fmt: skip
    namespace.update(
        TrainingArguments=TrainingArguments,
        model=BertForMaskedLM(config),
        ds=[{**encode(t), "task": lang} for lang, texts in strings.items() for t in texts],
    )


def given_seq2seq_trainer(namespace: dict, monkeypatch) -> None:
    from transformers import Seq2SeqTrainer

    namespace["Seq2SeqTrainer"] = Seq2SeqTrainer


def given_lightning(namespace: dict, monkeypatch) -> None:
    import lightning

    namespace["L"] = lightning


def given_planted_runs(namespace: dict, monkeypatch) -> None:
    """runs/sum and runs/pcgrad, planted traces of tests/figures, and ``others``: the
    similarity and quality of runs/pcgrad (the parts ``compare_runs`` reads; seconds, not the
    typology's ten)."""
    import analyses

    spec = importlib.util.spec_from_file_location(
        "figures_traces", ROOT / "tests/figures/conftest.py"
    )
    traces = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(traces)
    traces.write_trace(Path("runs/sum"))
    traces.write_trace(Path("runs/pcgrad"), method="pcgrad", seed=1, chrf_shift=1.0)
    namespace["others"] = [analyses.analyse_run("runs/pcgrad", parts=["similarity", "quality"])]


def given_process_group(namespace: dict, monkeypatch) -> None:
    """A one-process gloo group (the block calls ``init_process_group``), loopback only."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                        "WORLD_SIZE": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    torch.manual_seed(0)
    training_loop(namespace, Net(), out_width=1)
    namespace.update(dist=dist, device=torch.device("cpu"))


def given_fully_shard(namespace: dict, monkeypatch) -> None:
    """A model with ``.layers``, and ``fully_shard``."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    training_loop(namespace, Encoder(), out_width=4)
    namespace["fully_shard"] = fully_shard


#: per document: (text of the first block that needs them, the names it is given)
GIVEN: dict[str, list[tuple[str, Callable]]] = {
    "README.md": [
        ("gt.Tracer(model, tasks=langs", given_training_loop),
        ("GeomtraceTrainer(", given_hugging_face),
        ("Seq2SeqTrainer", given_seq2seq_trainer),
        ("L.LightningModule", given_lightning),
    ],
    "figures/README.md": [("import analyses, figures", given_planted_runs)],
    "docs/scaling.md": [
        ("dist.init_process_group", given_process_group),
        ("fully_shard(layer)", given_fully_shard),
    ],
}


# -- what each document's examples did --------------------------------------------------------
def check_readme(namespace: dict) -> None:
    trace = gt.open_trace("runs/a")
    assert trace.tasks == LANGS and trace.iso_codes["ja"] == "jpn"
    assert trace.steps.tolist() == [0]  # every=50 over 3 steps; MultiTask's run replaced it
    assert namespace["trace"].cosine("encoder.layers.0").shape == (1, 3, 3)
    whole = namespace["trace"].cosine("all")[0]
    np.testing.assert_allclose(np.diag(whole), 1.0, rtol=1e-6)
    assert gt.open_trace("runs/hf").steps.tolist() == [0]
    assert any(Path("runs/a/tb_export").iterdir())


def check_recipe(namespace: dict) -> None:
    trace = gt.open_trace(namespace["run_dir"])
    assert trace.tasks == ["es", "ru", "ja"] and len(trace.steps) >= 2
    assert callable(namespace["make"])


def check_figures(namespace: dict) -> None:
    drawn = namespace["drawn"]
    assert sorted(drawn) == ["f1", "f2", "f3", "f4", "f5", "f7"]  # every figure applies here
    saved = sorted(p.name for p in Path("out/sum").iterdir())
    assert len(saved) == 12 and {Path(name).suffix for name in saved} == {".png", ".svg"}
    assert "f1_similarity_heatmap.svg" in saved
    report = Path("report.html").read_text(encoding="utf-8")
    assert namespace["result"].label in report and report.count("<img") >= 7  # f1..f7


def check_scaling(namespace: dict) -> None:
    assert gt.open_trace("runs/ddp").steps.tolist() == [0]


CHECKS = {
    "README.md": check_readme,
    "geomtrace/recipe/README.md": check_recipe,
    "figures/README.md": check_figures,
    "docs/scaling.md": check_scaling,
}


def test_every_markdown_file_with_python_examples_is_run():
    found = set()
    for path in ROOT.rglob("*.md"):
        rel = path.relative_to(ROOT).as_posix()
        if not any(part.startswith(".") for part in Path(rel).parts) and FENCE.search(
            path.read_text(encoding="utf-8")
        ):
            found.add(rel)
    assert found <= set(DOCUMENTS), f"not run: {sorted(found - set(DOCUMENTS))}"
    assert set(CHECKS) == {d for d in DOCUMENTS if python_blocks(d)}


def test_blocks_not_executed_are_few_and_say_why():
    skipped = [b for d in DOCUMENTS for b in python_blocks(d) if b.not_executed is not None]
    assert len(skipped) <= 2, [f"{b.document}:{b.line}" for b in skipped]
    assert all(len(b.not_executed) > 20 for b in skipped)


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if python_blocks(d)])
def test_the_examples_of_a_document_run(document, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__example__"}
    given = list(GIVEN.get(document, []))
    try:
        for block in python_blocks(document):
            if block.not_executed is not None:
                continue
            for needed in [g for g in given if g[0] in block.code]:
                needed[1](namespace, monkeypatch)
                given.remove(needed)
            exec(compile(block.code, f"{document}:{block.line}", "exec"), namespace)
        assert not given, f"givens never used (the examples changed?): {[g[0] for g in given]}"
        CHECKS[document](namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, gt.Tracer):
                value.close()
        if "dist" in namespace and namespace["dist"].is_initialized():
            namespace["dist"].destroy_process_group()
