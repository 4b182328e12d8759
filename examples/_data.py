"""Real multilingual strings for the examples: the gettext catalogs Django ships (offline)."""

from geomtrace.recipe.corpus import parallel_strings


def django_strings(langs: list[str], per_lang: int) -> dict[str, list[str]]:
    """``per_lang`` UI strings translated into every language of ``langs`` (same messages)."""
    return parallel_strings(langs, per_lang)
