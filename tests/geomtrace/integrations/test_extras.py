"""The integrations are optional extras: never imported by geomtrace, named when missing."""

import importlib
import subprocess
import sys

import pytest

import geomtrace as gt
import geomtrace.integrations as integrations
from geomtrace.integrations import MissingExtraError

FRAMEWORKS = ["transformers", "accelerate", "lightning", "pytorch_lightning", "tensorboard"]


def test_importing_geomtrace_and_integrations_imports_no_framework():
    code = (
        "import sys, geomtrace, geomtrace.integrations\n"
        "geomtrace.integrations.snapshot_scalars\n"
        f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("framework", "module", "name", "extra"),
    [
        ("transformers", "geomtrace.integrations.hf", "GeomtraceTrainer", "hf"),
        ("lightning", "geomtrace.integrations.lightning", "GeometryMixin", "lightning"),
        ("tensorboard", "geomtrace.integrations.tensorboard", "TensorBoardSink", "tensorboard"),
    ],
)
def test_a_missing_framework_names_its_extra(monkeypatch, framework, module, name, extra):
    # None in sys.modules makes `import framework` fail, as if it were not installed.
    monkeypatch.setitem(sys.modules, framework, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    if name in vars(integrations):  # the lazy export's cache (hasattr would import it)
        monkeypatch.delattr(integrations, name)
    with pytest.raises(MissingExtraError, match=rf"pip install 'geomtrace\[{extra}\]'") as info:
        importlib.import_module(module)
    assert isinstance(info.value, gt.GeomtraceError) and isinstance(info.value, ImportError)
    with pytest.raises(gt.GeomtraceError, match=rf"geomtrace\[{extra}\]"):
        getattr(integrations, name)
