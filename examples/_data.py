"""Real multilingual strings for the examples: the gettext catalogs Django ships (offline)."""

from pathlib import Path


def django_strings(langs: list[str], per_lang: int) -> dict[str, list[str]]:
    """``per_lang`` UI strings translated into every language of ``langs`` (same messages)."""
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
    return {lang: [tables[lang][m] for m in shared] for lang in langs}
