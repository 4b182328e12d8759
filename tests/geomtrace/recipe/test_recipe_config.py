"""RecipeConfig: TOML round trip, presets, validation, CLI precedence."""

import tomllib

import pytest

from cli import build_parser, resolve_config
from geomtrace import InvalidInputError
from geomtrace.recipe.config import PRESETS, RecipeConfig, preset, to_toml
from geomtrace.recipe.languages import DEFAULT_LANGUAGES, DJANGO_LANGUAGES


def test_toml_round_trip(tmp_path):
    config = RecipeConfig(
        name='odd "name" \\ here', langs=["es", "zh_Hans"], lr=1e-4, probe=True, beta=0.5
    )
    path = tmp_path / "c.toml"
    config.write_toml(path)
    assert RecipeConfig.from_toml(path) == config
    raw = tomllib.loads(path.read_text())
    assert raw["langs"] == ["es", "zh_Hans"] and raw["lr"] == 1e-4 and raw["probe"] is True


def test_to_toml_by_hand():
    assert to_toml({"a": 1, "b": 0.5, "c": "x", "d": [1, 2], "e": False}) == (
        'a = 1\nb = 0.5\nc = "x"\nd = [1, 2]\ne = false\n'
    )


def test_defaults():
    config = RecipeConfig()
    assert config.langs == list(DEFAULT_LANGUAGES)
    assert (config.direction, config.method, config.groups) == ("x2en", "sum", "all_layer")
    # the default experiment (issue 21): every text domain, 768 fresh snapshot rows every 40
    assert config.every == 40 and config.snapshot_rows == 768
    assert "jupyterlab" in config.domains and len(config.langs) == 16
    config.validate()


def test_from_dict_errors_and_coercions():
    with pytest.raises(InvalidInputError, match="unknown config key.*bogus"):
        RecipeConfig.from_dict({"bogus": 1})
    assert RecipeConfig.from_dict({"lr": 1}).lr == 1.0
    assert RecipeConfig.from_dict({"langs": "es,fr de"}).langs == ["es", "fr", "de"]
    with pytest.raises(InvalidInputError, match="probe"):
        RecipeConfig.from_dict({"probe": "yes"})


@pytest.mark.parametrize(
    ("values", "message"),
    [({"direction": "x2y"}, "direction"), ({"method": "adam"}, "method"),
     ({"steps": 0}, "steps"), ({"d_model": 100, "nhead": 3}, "multiple"),
     ({"method": "gradvac", "probe": True}, "probe"), ({"langs": []}, "langs")],
)  # fmt: skip
def test_validate(values, message):
    with pytest.raises(InvalidInputError, match=message):
        RecipeConfig.from_dict(values).validate()


def test_presets():
    assert set(PRESETS) == {"default", "quick", "django24", "full"}
    quick = preset("quick")
    assert len(quick.langs) == 8 and quick.steps < RecipeConfig().steps
    full = preset("full")
    assert full.device == "cuda" and len(full.langs) == 34 and "pt_BR" not in full.langs
    # sized for the data: ~35 epochs of each language's ~2,800 training pairs, not ~1,270
    assert full.steps * full.batch_per_lang < 40 * 2_800
    old = preset("django24")
    assert old.langs == list(DJANGO_LANGUAGES) and old.domains == ["django"]
    assert (old.snapshot_rows, old.every, old.steps) == (96, 20, RecipeConfig().steps)
    assert preset("quick").domains == ["django"]
    with pytest.raises(InvalidInputError, match="available: default, quick, django24, full"):
        preset("huge")


def test_cli_precedence(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('steps = 7\nevery = 3\nlangs = ["es", "fr"]\nseed = 5\n')
    args = build_parser().parse_args(
        ["trace", "--config", str(path), "--steps", "9", "--set", "lr=0.01", "--no-probe",
         "--langs", "de,ru", "ja"]
    )  # fmt: skip
    config = resolve_config(args)
    assert (config.steps, config.every, config.seed, config.lr) == (9, 3, 5, 0.01)
    assert config.langs == ["de", "ru", "ja"] and config.probe is False
    quick = resolve_config(build_parser().parse_args(["trace", "--preset", "quick"]))
    assert quick == preset("quick")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"langs = " + b"[" * 5000 + b"]" * 5000 + b"\n", r"nested too deeply"),
        (bytes(range(256)) * 4, r"is not UTF-8 text"),
        (b"lr = 1e-3\n" + b"#" * (2 << 20), r"is 2\.0 MiB.*at most 1 MiB"),
    ],
)
def test_hostile_config_files_are_refused_naming_the_file(tmp_path, content, message):
    """Issue 19, defect 8: a 5,000-deep array in config.toml raised RecursionError and a
    binary config.toml UnicodeDecodeError."""
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=rf"config file .*config.toml.* {message}"):
        RecipeConfig.from_toml(path)
    with pytest.raises(InvalidInputError, match=r"config file .* is a directory"):
        RecipeConfig.from_toml(tmp_path)
