"""The locale -> BCP-47 -> ISO 639-3 table, checked against lang2vec and the real catalogs."""

import unicodedata
from collections import Counter

import pytest

from geomtrace import InvalidInputError
from geomtrace.recipe.corpus import build_corpus
from geomtrace.recipe.languages import (
    DEFAULT_LANGUAGES,
    DJANGO_LANGUAGES,
    LANGUAGES,
    NOT_IN_URIEL,
    VARIANT_BASE,
    iso_codes_for,
    normalize_locale,
    uriel_languages,
)


def test_macrolanguages_map_to_the_individual_language():
    expected = {
        "ar": "arb", "fa": "pes", "et": "ekk", "sq": "als", "ms": "zsm", "uz": "uzn",
        "mn": "khk", "sw": "swh", "az": "azj", "zh_Hans": "cmn", "zh_Hant": "cmn",
        # URIEL's own codes: the macrolanguage nep (no npi) and lav (no lvs)
        "ne": "nep", "lv": "lav",
        "es": "spa", "ja": "jpn", "he": "heb", "kk": "kaz",
    }  # fmt: skip
    assert {loc: LANGUAGES[loc].iso639_3 for loc in expected} == expected
    assert "npi" in LANGUAGES["ne"].note and "lvs" in LANGUAGES["lv"].note


def test_bcp47_tags_and_variants():
    assert LANGUAGES["pt_BR"].bcp47 == "pt-BR"
    assert LANGUAGES["sr_Latn"].bcp47 == "sr-Latn"
    assert LANGUAGES["zh_Hans"].bcp47 == "zh-Hans"
    assert VARIANT_BASE["pt_BR"] == "pt" and VARIANT_BASE["es_AR"] == "es"
    assert "zh_Hans" not in VARIANT_BASE
    # a variant has its base language's ISO code
    assert all(LANGUAGES[v].iso639_3 == LANGUAGES[b].iso639_3 for v, b in VARIANT_BASE.items())


@pytest.mark.parametrize(
    ("spelling", "locale"),
    [("pt-BR", "pt_BR"), ("pt_br", "pt_BR"), ("zh-hans", "zh_Hans"), ("zh", "zh_Hans"),
     ("sr@latin", "sr_Latn"), ("sr-Latn", "sr_Latn"), (" es ", "es")],
)  # fmt: skip
def test_normalize_locale(spelling, locale):
    assert normalize_locale(spelling) == locale


def test_unknown_language_lists_the_available_ones():
    with pytest.raises(InvalidInputError) as err:
        normalize_locale("xx")
    message = str(err.value)
    assert "'xx'" in message
    assert all(loc in message.split() for loc in ("es", "zh_Hans", "pt_BR", "uk"))


def test_not_in_uriel_matches_installed_lang2vec():
    uriel = uriel_languages()
    assert uriel is not None
    table_codes = {row.iso639_3 for row in LANGUAGES.values()}
    assert {c for c in table_codes if c not in uriel} == NOT_IN_URIEL
    assert "nep" in uriel and "npi" not in uriel
    assert "lav" in uriel and "lvs" not in uriel


def test_iso_codes_report_languages_outside_uriel():
    codes, problems = iso_codes_for(["es", "eo", "nn", "ar"])
    # reported, not dropped: the code stays, the problem is named
    assert codes == {"es": "spa", "eo": "epo", "nn": "nno", "ar": "arb"}
    assert set(problems) == {"eo", "nn"} and "epo" in problems["eo"]


def test_django24_languages_span_seven_scripts_and_eight_families():
    rows = [LANGUAGES[loc] for loc in DJANGO_LANGUAGES]
    assert len(rows) == 24
    assert {r.script for r in rows} == {"Latn", "Cyrl", "Arab", "Hebr", "Deva", "Hans", "Jpan"}
    assert len({r.family for r in rows}) >= 8
    assert not any(r.iso639_3 in NOT_IN_URIEL for r in rows)


def test_default_languages_span_six_scripts_and_seven_families():
    rows = [LANGUAGES[loc] for loc in DEFAULT_LANGUAGES]
    assert len(rows) == 16 and set(DEFAULT_LANGUAGES) < set(DJANGO_LANGUAGES) | {"ko"}
    assert {r.script for r in rows} == {"Latn", "Cyrl", "Hebr", "Hans", "Jpan", "Kore"}
    assert len({r.family for r in rows}) >= 7
    assert not any(r.iso639_3 in NOT_IN_URIEL for r in rows)


_UNICODE_SCRIPT = {
    "Latn": {"LATIN"}, "Cyrl": {"CYRILLIC"}, "Arab": {"ARABIC"}, "Hebr": {"HEBREW"},
    "Deva": {"DEVANAGARI"}, "Hans": {"CJK"}, "Jpan": {"CJK", "HIRAGANA", "KATAKANA"},
}  # fmt: skip


def test_table_scripts_match_the_catalog_text():
    corpus = build_corpus(list(DJANGO_LANGUAGES))
    for loc in DJANGO_LANGUAGES:
        names = Counter(
            unicodedata.name(ch, "?").split()[0]
            for p in corpus.pairs[loc]
            for ch in p.x
            if ch.isalpha()
        )
        top = {name for name, _ in names.most_common(2)}
        assert names.most_common(1)[0][0] in _UNICODE_SCRIPT[LANGUAGES[loc].script], loc
        assert top & _UNICODE_SCRIPT[LANGUAGES[loc].script], loc
