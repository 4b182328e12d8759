"""Real multilingual strings for the integration tests: Django's gettext catalogs."""

from pathlib import Path

import pytest

LANGS = ["de", "fr", "ru", "ja"]  # three scripts: Latin, Cyrillic, Japanese


def django_strings(langs: list[str], per_lang: int) -> dict[str, list[str]]:
    """The first ``per_lang`` UI strings (by English msgid) translated in every language."""
    import django
    import polib

    root = Path(django.__file__).parent / "conf" / "locale"
    tables = {}
    for lang in langs:
        catalog = polib.pofile(str(root / lang / "LC_MESSAGES" / "django.po"))
        tables[lang] = {
            e.msgid: e.msgstr
            for e in catalog
            if e.msgid and not e.msgid_plural and e.msgstr.strip() and "fuzzy" not in e.flags
        }
    shared = sorted(set.intersection(*(set(t) for t in tables.values())))[:per_lang]
    assert len(shared) == per_lang
    return {lang: [tables[lang][m] for m in shared] for lang in langs}


@pytest.fixture(scope="session")
def multilingual() -> dict[str, list[str]]:
    """8 Django UI strings in each of de, fr, ru, ja."""
    return django_strings(LANGS, 8)
