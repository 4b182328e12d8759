"""The embedded recipe: a real multilingual experiment that runs offline.

An English <-> X parallel corpus from the gettext catalogs of installed packages
(:mod:`.corpus`, :mod:`.languages`), a small byte-level Transformer (:mod:`.model`), a traced
training loop over any :class:`Recipe` (:mod:`.training`) and ``run(config) -> run directory``
(:mod:`.runner`), the entry point of ``geomtrace trace`` and ``geomtrace reproduce``.

Names are imported lazily: ``import geomtrace.recipe`` does not import torch.
"""

from geomtrace import lazy_exports

_EXPORTS = {
    "RecipeConfig": "geomtrace.recipe.config",
    "PRESETS": "geomtrace.recipe.config",
    "preset": "geomtrace.recipe.config",
    "LANGUAGES": "geomtrace.recipe.languages",
    "DEFAULT_LANGUAGES": "geomtrace.recipe.languages",
    "DJANGO_LANGUAGES": "geomtrace.recipe.languages",
    "Language": "geomtrace.recipe.languages",
    "Corpus": "geomtrace.recipe.corpus",
    "build_corpus": "geomtrace.recipe.corpus",
    "split_of": "geomtrace.recipe.corpus",
    "Recipe": "geomtrace.recipe.training",
    "train": "geomtrace.recipe.training",
    "ByteTransformer": "geomtrace.recipe.model",
    "make_recipe": "geomtrace.recipe.embedded",
    "run": "geomtrace.recipe.runner",
    "load_model": "geomtrace.recipe.runner",
    # `geomtrace trace --list-languages` (the command itself is defined in cli.py)
    "language_table": "geomtrace.recipe._language_table",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
