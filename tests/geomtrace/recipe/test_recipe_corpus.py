"""The gettext corpus builder: a hand-written fixture catalog and the real Django catalogs."""

import hashlib
from collections import Counter

import polib
import pytest

from geomtrace import InvalidInputError
from geomtrace.recipe.corpus import (
    build_corpus,
    catalog_files,
    char_profile,
    probe_strings,
    read_catalog,
    split_of,
)
from geomtrace.recipe.languages import DJANGO_LANGUAGES, LANGUAGES

FIXTURE_PO = r"""
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Language: fr\n"

msgid "Save"
msgstr "Enregistrer"

#, fuzzy
msgid "Delete"
msgstr "Supprimer peut-être"

msgid "Untranslated string"
msgstr ""

msgid "One item"
msgid_plural "%(count)s items"
msgstr[0] "Un élément"
msgstr[1] "%(count)s éléments"

#, python-format
msgid "Hello %(name)s"
msgstr "Bonjour %(name)s"

msgid "Page {0} of {1}"
msgstr "Page {0} sur {1}"

msgctxt "month"
msgid "May"
msgstr "mai"

msgctxt "verb"
msgid "May"
msgstr "peut"

#~ msgid "Old string"
#~ msgstr "Vieille chaîne"
"""


@pytest.fixture
def locale_dir(tmp_path):
    """``<tmp>/locale/fr/LC_MESSAGES``: a.po (above), a.mo (must be ignored: a.po wins),
    b.mo alone (read), with a duplicate of "Save" and a plural entry."""
    folder = tmp_path / "locale" / "fr" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "a.po").write_text(FIXTURE_PO, encoding="utf-8")
    shadow = polib.POFile()
    shadow.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
    shadow.append(polib.POEntry(msgid="Only in a.mo", msgstr="Seulement dans a.mo"))
    shadow.save_as_mofile(str(folder / "a.mo"))
    b = polib.POFile()
    b.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
    b.append(polib.POEntry(msgid="Save", msgstr="Sauvegarder"))  # duplicate: a.po's wins
    b.append(polib.POEntry(msgid="Close", msgstr="Fermer"))
    b.append(polib.POEntry(msgid="", msgstr=""))
    b.append(
        polib.POEntry(
            msgid="file", msgid_plural="files", msgstr_plural={0: "fichier", 1: "fichiers"}
        )
    )
    b.save_as_mofile(str(folder / "b.mo"))
    return tmp_path / "locale"


def test_read_po_excludes_fuzzy_obsolete_untranslated_plural(locale_dir):
    pairs, skipped = read_catalog(locale_dir / "fr" / "LC_MESSAGES" / "a.po")
    assert pairs == [
        ("Save", "Enregistrer"),
        ("Hello %(name)s", "Bonjour %(name)s"),
        ("Page {0} of {1}", "Page {0} sur {1}"),
        ("May", "mai"),
        ("May", "peut"),
    ]
    # (polib parses the header into metadata: it is not an entry)
    assert skipped == Counter(fuzzy=1, untranslated=1, plural=1, obsolete=1)


def test_read_mo(locale_dir):
    pairs, skipped = read_catalog(locale_dir / "fr" / "LC_MESSAGES" / "b.mo")
    # a .mo stores its entries sorted by msgid
    assert pairs == [("Close", "Fermer"), ("Save", "Sauvegarder")]
    assert skipped["plural"] == 1


def test_po_preferred_over_mo_of_the_same_name(locale_dir):
    files = catalog_files(locale_dir, "fr")
    assert [f.name for f in files] == ["a.po", "b.mo"]
    assert catalog_files(locale_dir, "de") == []


def test_build_corpus_deduplicates_and_keeps_placeholders(locale_dir):
    corpus = build_corpus(["fr"], locale_dirs=[locale_dir])
    got = [(p.en, p.x, p.domain) for p in corpus.pairs["fr"]]
    assert got == [
        ("Save", "Enregistrer", "custom"),
        ("Hello %(name)s", "Bonjour %(name)s", "custom"),
        ("Page {0} of {1}", "Page {0} sur {1}", "custom"),
        ("May", "mai", "custom"),  # first context wins
        ("Close", "Fermer", "custom"),
    ]
    assert corpus.skipped["fr"]["duplicate"] == 2  # "May" (verb) and b.mo's "Save"
    assert corpus.skipped["fr"]["plural"] == 2
    counts = corpus.counts()["fr"]
    assert counts["total"] == 5
    assert counts["train"] + counts["dev"] + counts["test"] == 5


def test_language_without_catalog_is_an_error(locale_dir):
    with pytest.raises(InvalidInputError, match="no translated catalog entries for language 'de'"):
        build_corpus(["de"], locale_dirs=[locale_dir])


def test_split_is_blake2b_of_the_english_string():
    for text in ["Save", "Hello %(name)s", "Ensure this value is less than or equal to 5."]:
        u = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64
        expected = "test" if u < 0.10 else "dev" if u < 0.15 else "train"
        assert split_of(text) == expected
    assert split_of("x", dev_fraction=0.0, test_fraction=0.999999) in ("test", "train")


def test_char_profile_by_hand():
    profile = char_profile(["aab", "a c"], top=2)
    assert profile == {"a": 3 / 5, "b": 1 / 5}


@pytest.fixture(scope="module")
def django_corpus():
    return build_corpus(list(DJANGO_LANGUAGES))


def test_django_counts(django_corpus):
    counts = django_corpus.counts()
    assert set(counts) == set(DJANGO_LANGUAGES)
    for lang, c in counts.items():
        assert 400 <= c["total"] <= 900, (lang, c)
        assert c["total"] == c["train"] + c["dev"] + c["test"]
        # about 10% test, 5% dev
        assert 0.06 < c["test"] / c["total"] < 0.14, (lang, c)
        assert 0.02 < c["dev"] / c["total"] < 0.09, (lang, c)
    assert counts["fr"]["total"] >= 750
    for lang in DJANGO_LANGUAGES:
        pairs = django_corpus.pairs[lang]
        assert all(p.x.strip() and p.en for p in pairs)
        assert len({p.en for p in pairs}) == len(pairs)  # deduplicated
        assert django_corpus.skipped[lang]["plural"] > 0
    # placeholders are kept verbatim
    fr = {p.en: p.x for p in django_corpus.pairs["fr"]}
    placeholder = [en for en in fr if "%(" in en]
    assert placeholder and all("%(" in fr[en] for en in placeholder[:20])


def test_django_split_identical_across_languages(django_corpus):
    test_en = {lang: {p.en for p in django_corpus.split(lang, "test")} for lang in DJANGO_LANGUAGES}
    train_en = {
        lang: {p.en for p in django_corpus.split(lang, "train")} for lang in DJANGO_LANGUAGES
    }
    every_train = set().union(*train_en.values())
    every_test = set().union(*test_en.values())
    assert not every_train & every_test  # no test sentence is trained on, in any language
    es, ja = test_en["es"], test_en["ja"]
    assert len(es & ja) > 0.8 * min(len(es), len(ja))


def test_probe_strings_are_multiway_parallel(django_corpus):
    probe = probe_strings(django_corpus, "train", size=16)
    assert len(probe) == 16
    for lang in DJANGO_LANGUAGES:
        ens = {p.en for p in django_corpus.split(lang, "train")}
        assert set(probe) <= ens
    # independent of the order of the languages
    reordered = build_corpus(["ja", "es"])
    two = probe_strings(reordered, "train", size=5)
    assert two == probe_strings(build_corpus(["es", "ja"]), "train", size=5)


def test_every_table_locale_has_django_catalogs():
    corpus = build_corpus(list(LANGUAGES))
    assert all(len(pairs) > 0 for pairs in corpus.pairs.values())
    assert len(corpus.pairs) == len(LANGUAGES) >= 90


def test_parallel_strings_are_translations_of_the_same_english():
    from geomtrace.recipe.corpus import build_corpus, parallel_strings, probe_strings

    strings = parallel_strings(["de", "ja"], 5)
    assert [len(v) for v in strings.values()] == [5, 5]
    corpus = build_corpus(["de", "ja"])
    english = probe_strings(corpus, "train", 5)
    for lang in ("de", "ja"):
        pairs = {p.en: p.x for p in corpus.split(lang, "train")}
        assert strings[lang] == [pairs[en] for en in english]
