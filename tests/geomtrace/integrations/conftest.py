"""Real multilingual strings for the integration tests: Django's gettext catalogs."""

import pytest

from geomtrace.recipe.corpus import parallel_strings

LANGS = ["de", "fr", "ru", "ja"]  # three scripts: Latin, Cyrillic, Japanese


def django_strings(langs: list[str], per_lang: int) -> dict[str, list[str]]:
    """``per_lang`` UI strings translated in every language (same English messages)."""
    return parallel_strings(langs, per_lang)


@pytest.fixture(scope="session")
def multilingual() -> dict[str, list[str]]:
    """8 Django UI strings in each of de, fr, ru, ja."""
    return django_strings(LANGS, 8)
