"""The locale -> BCP-47 -> ISO 639-3 table of the embedded corpus.

Gettext catalogs are named by POSIX-style locales (``pt_BR``, ``sr_Latn``, ``zh_Hans``). The
analyses need ISO 639-3 codes that URIEL / lang2vec knows, so every locale the corpus can offer is
listed here with:

- ``bcp47``: the BCP-47 tag (``pt-BR``, ``sr-Latn``, ``zh-Hans``);
- ``iso639_3``: the *individual* language URIEL has typological data for. Macrolanguages map to
  the individual language the catalogs are written in (ar->arb Standard Arabic, fa->pes Iranian
  Persian, et->ekk Standard Estonian, sq->als Tosk Albanian, ms->zsm Standard Malay, uz->uzn
  Northern Uzbek, mn->khk Halh Mongolian, sw->swh Swahili, az->azj North Azerbaijani,
  zh_Hans/zh_Hant->cmn Mandarin). Two exceptions follow URIEL rather than ISO: Nepali is ``nep``
  (URIEL has the macrolanguage ``nep`` but not the individual ``npi``) and Latvian is ``lav``
  (URIEL has ``lav`` but not ``lvs``);
- ``script``: the ISO 15924 code of the catalog text (``Hans``/``Hant`` for the two Chinese
  catalogs, ``Jpan`` for Japanese, ``Kore`` for Korean);
- ``family``: a coarse genealogical label, only for summaries and documentation (the analyses
  take typology from lang2vec, not from here).

Regional variants (``pt_BR``, ``es_AR``, ``sr_Latn``, ``ar_DZ``, ...) map to the ISO code of their
language; the corpus uses them as separate tasks only when asked for by name, otherwise a language
is its base locale. Whether a code is in URIEL (lang2vec's ``URIEL_LANGUAGES``) is stored with the table
(:data:`NOT_IN_URIEL`, checked against the installed lang2vec by the tests); a selected language that is not is *reported*
(a warning and the trace's meta ``"iso_problems"``), never silently dropped.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from geomtrace import InvalidInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Language:
    """One row of the table."""

    locale: str
    bcp47: str
    iso639_3: str
    script: str
    name: str
    family: str
    note: str = ""


# locale, bcp47, iso639-3, script, English name, family, note
_ROWS: list[tuple[str, str, str, str, str, str, str]] = [
    ("af", "af", "afr", "Latn", "Afrikaans", "Germanic", ""),
    ("ar", "ar", "arb", "Arab", "Arabic", "Semitic", "macrolanguage ara -> Standard Arabic arb"),
    ("ar_DZ", "ar-DZ", "arb", "Arab", "Arabic (Algeria)", "Semitic", "regional variant of ar"),
    ("ast", "ast", "ast", "Latn", "Asturian", "Romance", ""),
    (
        "az",
        "az",
        "azj",
        "Latn",
        "Azerbaijani",
        "Turkic",
        "macrolanguage aze -> North Azerbaijani azj",
    ),
    ("be", "be", "bel", "Cyrl", "Belarusian", "Slavic", ""),
    ("bg", "bg", "bul", "Cyrl", "Bulgarian", "Slavic", ""),
    ("bn", "bn", "ben", "Beng", "Bengali", "Indo-Aryan", ""),
    ("br", "br", "bre", "Latn", "Breton", "Celtic", ""),
    ("bs", "bs", "bos", "Latn", "Bosnian", "Slavic", ""),
    ("ca", "ca", "cat", "Latn", "Catalan", "Romance", ""),
    ("ckb", "ckb", "ckb", "Arab", "Central Kurdish", "Iranian", ""),
    ("cs", "cs", "ces", "Latn", "Czech", "Slavic", ""),
    ("cy", "cy", "cym", "Latn", "Welsh", "Celtic", ""),
    ("da", "da", "dan", "Latn", "Danish", "Germanic", ""),
    ("de", "de", "deu", "Latn", "German", "Germanic", ""),
    ("dsb", "dsb", "dsb", "Latn", "Lower Sorbian", "Slavic", ""),
    ("el", "el", "ell", "Grek", "Greek", "Hellenic", ""),
    (
        "eo",
        "eo",
        "epo",
        "Latn",
        "Esperanto",
        "Constructed",
        "not in URIEL (lang2vec learned set only)",
    ),
    ("es", "es", "spa", "Latn", "Spanish", "Romance", ""),
    ("es_AR", "es-AR", "spa", "Latn", "Spanish (Argentina)", "Romance", "regional variant of es"),
    ("es_CO", "es-CO", "spa", "Latn", "Spanish (Colombia)", "Romance", "regional variant of es"),
    ("es_MX", "es-MX", "spa", "Latn", "Spanish (Mexico)", "Romance", "regional variant of es"),
    ("es_VE", "es-VE", "spa", "Latn", "Spanish (Venezuela)", "Romance", "regional variant of es"),
    ("et", "et", "ekk", "Latn", "Estonian", "Uralic", "macrolanguage est -> Standard Estonian ekk"),
    ("eu", "eu", "eus", "Latn", "Basque", "Isolate", ""),
    ("fa", "fa", "pes", "Arab", "Persian", "Iranian", "macrolanguage fas -> Iranian Persian pes"),
    ("fi", "fi", "fin", "Latn", "Finnish", "Uralic", ""),
    ("fr", "fr", "fra", "Latn", "French", "Romance", ""),
    ("fy", "fy", "fry", "Latn", "Western Frisian", "Germanic", ""),
    ("ga", "ga", "gle", "Latn", "Irish", "Celtic", ""),
    ("gd", "gd", "gla", "Latn", "Scottish Gaelic", "Celtic", ""),
    ("gl", "gl", "glg", "Latn", "Galician", "Romance", ""),
    ("he", "he", "heb", "Hebr", "Hebrew", "Semitic", ""),
    ("hi", "hi", "hin", "Deva", "Hindi", "Indo-Aryan", ""),
    ("hr", "hr", "hrv", "Latn", "Croatian", "Slavic", ""),
    ("hsb", "hsb", "hsb", "Latn", "Upper Sorbian", "Slavic", ""),
    ("hu", "hu", "hun", "Latn", "Hungarian", "Uralic", ""),
    ("hy", "hy", "hye", "Armn", "Armenian", "Armenian", ""),
    ("ia", "ia", "ina", "Latn", "Interlingua", "Constructed", "not in URIEL"),
    ("id", "id", "ind", "Latn", "Indonesian", "Austronesian", ""),
    ("ig", "ig", "ibo", "Latn", "Igbo", "Niger-Congo", ""),
    ("io", "io", "ido", "Latn", "Ido", "Constructed", "not in URIEL"),
    ("is", "is", "isl", "Latn", "Icelandic", "Germanic", ""),
    ("it", "it", "ita", "Latn", "Italian", "Romance", ""),
    ("ja", "ja", "jpn", "Jpan", "Japanese", "Japonic", ""),
    ("ka", "ka", "kat", "Geor", "Georgian", "Kartvelian", ""),
    ("kab", "kab", "kab", "Latn", "Kabyle", "Berber", ""),
    ("kk", "kk", "kaz", "Cyrl", "Kazakh", "Turkic", ""),
    ("km", "km", "khm", "Khmr", "Khmer", "Austroasiatic", ""),
    ("kn", "kn", "kan", "Knda", "Kannada", "Dravidian", ""),
    ("ko", "ko", "kor", "Kore", "Korean", "Koreanic", ""),
    ("ky", "ky", "kir", "Cyrl", "Kyrgyz", "Turkic", ""),
    ("lb", "lb", "ltz", "Latn", "Luxembourgish", "Germanic", ""),
    ("lt", "lt", "lit", "Latn", "Lithuanian", "Baltic", ""),
    ("lv", "lv", "lav", "Latn", "Latvian", "Baltic", "URIEL has lav, not the individual lvs"),
    ("mk", "mk", "mkd", "Cyrl", "Macedonian", "Slavic", ""),
    ("ml", "ml", "mal", "Mlym", "Malayalam", "Dravidian", ""),
    ("mn", "mn", "khk", "Cyrl", "Mongolian", "Mongolic", "macrolanguage mon -> Halh Mongolian khk"),
    ("mr", "mr", "mar", "Deva", "Marathi", "Indo-Aryan", ""),
    ("ms", "ms", "zsm", "Latn", "Malay", "Austronesian", "macrolanguage msa -> Standard Malay zsm"),
    ("my", "my", "mya", "Mymr", "Burmese", "Sino-Tibetan", ""),
    ("nb", "nb", "nob", "Latn", "Norwegian Bokmal", "Germanic", ""),
    ("ne", "ne", "nep", "Deva", "Nepali", "Indo-Aryan", "URIEL has nep, not the individual npi"),
    ("nl", "nl", "nld", "Latn", "Dutch", "Germanic", ""),
    (
        "nn",
        "nn",
        "nno",
        "Latn",
        "Norwegian Nynorsk",
        "Germanic",
        "not in URIEL (lang2vec learned set only)",
    ),
    ("os", "os", "oss", "Cyrl", "Ossetian", "Iranian", ""),
    ("pa", "pa", "pan", "Guru", "Punjabi", "Indo-Aryan", ""),
    ("pl", "pl", "pol", "Latn", "Polish", "Slavic", ""),
    ("pt", "pt", "por", "Latn", "Portuguese", "Romance", ""),
    ("pt_BR", "pt-BR", "por", "Latn", "Portuguese (Brazil)", "Romance", "regional variant of pt"),
    ("ro", "ro", "ron", "Latn", "Romanian", "Romance", ""),
    ("ru", "ru", "rus", "Cyrl", "Russian", "Slavic", ""),
    ("sk", "sk", "slk", "Latn", "Slovak", "Slavic", ""),
    ("sl", "sl", "slv", "Latn", "Slovenian", "Slavic", ""),
    ("sq", "sq", "als", "Latn", "Albanian", "Albanian", "macrolanguage sqi -> Tosk Albanian als"),
    ("sr", "sr", "srp", "Cyrl", "Serbian", "Slavic", ""),
    ("sr_Latn", "sr-Latn", "srp", "Latn", "Serbian (Latin)", "Slavic", "script variant of sr"),
    ("sv", "sv", "swe", "Latn", "Swedish", "Germanic", ""),
    ("sw", "sw", "swh", "Latn", "Swahili", "Niger-Congo", "macrolanguage swa -> Swahili swh"),
    ("ta", "ta", "tam", "Taml", "Tamil", "Dravidian", ""),
    ("te", "te", "tel", "Telu", "Telugu", "Dravidian", ""),
    ("tg", "tg", "tgk", "Cyrl", "Tajik", "Iranian", ""),
    ("th", "th", "tha", "Thai", "Thai", "Kra-Dai", ""),
    ("tk", "tk", "tuk", "Latn", "Turkmen", "Turkic", ""),
    ("tr", "tr", "tur", "Latn", "Turkish", "Turkic", ""),
    ("tt", "tt", "tat", "Cyrl", "Tatar", "Turkic", ""),
    ("udm", "udm", "udm", "Cyrl", "Udmurt", "Uralic", ""),
    ("ug", "ug", "uig", "Arab", "Uyghur", "Turkic", ""),
    ("uk", "uk", "ukr", "Cyrl", "Ukrainian", "Slavic", ""),
    ("ur", "ur", "urd", "Arab", "Urdu", "Indo-Aryan", ""),
    ("uz", "uz", "uzn", "Latn", "Uzbek", "Turkic", "macrolanguage uzb -> Northern Uzbek uzn"),
    ("vi", "vi", "vie", "Latn", "Vietnamese", "Austroasiatic", ""),
    (
        "zh_Hans",
        "zh-Hans",
        "cmn",
        "Hans",
        "Chinese (Simplified)",
        "Sino-Tibetan",
        "macrolanguage zho -> Mandarin cmn",
    ),
    (
        "zh_Hant",
        "zh-Hant",
        "cmn",
        "Hant",
        "Chinese (Traditional)",
        "Sino-Tibetan",
        "macrolanguage zho -> Mandarin cmn",
    ),
]

#: locale -> :class:`Language`, for every non-English locale Django ships catalogs for.
LANGUAGES: dict[str, Language] = {row[0]: Language(*row) for row in _ROWS}

#: The default 16 languages (issue 21): every language with >= 200 test strings of <= 40
#: bytes over all text domains; 6 scripts (Latn Cyrl Hebr Jpan Kore Hans), 7 families
#: (Indo-European, Uralic, Turkic, Afro-Asiatic, Japonic, Koreanic, Sino-Tibetan).
DEFAULT_LANGUAGES: tuple[str, ...] = (
    "es", "fr", "it", "de", "nl", "ru", "uk", "pl",
    "fi", "hu", "et", "tr", "he", "ja", "ko", "zh_Hans",
)  # fmt: skip

#: The GPU preset's languages (``--preset full``, issue 21): every base locale of the table with
#: >= 200 test strings of <= 128 bytes over all text domains (34 of 88; 9 scripts: Latn Arab
#: Cyrl Grek Hebr Jpan Kore Hans Hant). The others have too few test strings for a chrF
#: interval; ``--langs`` adds them back.
FULL_LANGUAGES: tuple[str, ...] = (
    "ar", "ca", "cs", "de", "el", "es", "et", "fa", "fi", "fr", "gl", "he", "hr", "hu", "id",
    "is", "it", "ja", "ko", "lt", "nb", "nl", "pl", "pt", "ro", "ru", "sk", "sl", "sv", "tr",
    "ug", "uk", "zh_Hans", "zh_Hant",
)  # fmt: skip

#: The previous default (Django catalogs only, ``--preset django24``): 24 languages, 7 scripts
#: (Latn Cyrl Arab Hebr Deva Hans Jpan), 9 families; kk, hi, mr have 30-32 test strings.
DJANGO_LANGUAGES: tuple[str, ...] = (
    "es", "fr", "it", "pt", "de", "nl", "sv", "ru", "uk", "bg", "pl", "cs",
    "fi", "hu", "et", "tr", "az", "kk", "ar", "he", "hi", "mr", "zh_Hans", "ja",
)  # fmt: skip

#: Locales that are regional or script variants, with the base locale they fall back to.
VARIANT_BASE: dict[str, str] = {
    loc: loc.split("_")[0] for loc in LANGUAGES if "_" in loc and loc not in ("zh_Hans", "zh_Hant")
}


def normalize_locale(code: str) -> str:
    """Map user spellings (``pt-BR``, ``zh-hans``, ``sr@latin``) to the table's locale key.

    Raises :class:`InvalidInputError` listing the available locales when nothing matches.
    """
    raw = code.strip()
    by_lower = {k.lower(): k for k in LANGUAGES}
    by_bcp = {v.bcp47.lower(): k for k, v in LANGUAGES.items()}
    key = raw.replace("-", "_").replace("@latin", "_Latn").lower()
    if key in by_lower:
        return by_lower[key]
    if raw.lower() in by_bcp:
        return by_bcp[raw.lower()]
    if key == "zh":
        return "zh_Hans"
    raise InvalidInputError(f"unknown language {code!r}; available: {' '.join(sorted(LANGUAGES))}")


#: ISO codes of the table outside lang2vec's ``URIEL_LANGUAGES`` (``epo`` and ``nno`` are only in
#: its learned-vector set). Stored so a run needs no lang2vec data; the tests check it against
#: the installed lang2vec (:func:`uriel_languages`).
NOT_IN_URIEL: frozenset[str] = frozenset({"epo", "ina", "ido", "nno"})


@functools.cache
def uriel_languages() -> frozenset[str] | None:
    """lang2vec's ``URIEL_LANGUAGES``, computed from its data file (None without lang2vec).

    lang2vec 1.1.2 defines it (``available_uriel_languages``) as ``langs[i]`` of
    ``family_features.npz`` for every column i of ``all(data != -1, axis=0)`` that is true: a
    subset of the 7970 codes its feature files carry (``nep`` and ``lav`` are in it, ``npi`` and
    ``lvs`` are not, although the feature files list them too). The same rule is applied here
    to the file, located through the installed distribution: importing ``lang2vec.lang2vec``
    takes seconds and fails when a ``bin/lang2vec.py`` script shadows the package.
    """
    from importlib import metadata

    import numpy as np

    try:
        dist = metadata.distribution("lang2vec")
    except metadata.PackageNotFoundError:
        log.warning("lang2vec is not installed; URIEL membership not checked")
        return None
    path = Path(str(dist.locate_file("lang2vec/data/family_features.npz")))
    with np.load(path) as f:
        data, langs = f["data"], f["langs"]
    mask = np.all(data != -1.0, axis=0)
    return frozenset(str(langs[i]) for i, m in enumerate(mask) if np.sum(m) > 0)


def in_uriel(iso639_3: str) -> bool:
    """Whether ``iso639_3`` is in lang2vec's ``URIEL_LANGUAGES`` (table codes: from
    :data:`NOT_IN_URIEL`; other codes: from the installed lang2vec)."""
    if any(row.iso639_3 == iso639_3 for row in LANGUAGES.values()):
        return iso639_3 not in NOT_IN_URIEL
    uriel = uriel_languages()
    return uriel is None or iso639_3 in uriel


def iso_codes_for(tasks: list[str]) -> tuple[dict[str, str | None], dict[str, str]]:
    """ISO 639-3 code per task (``None`` for a task that is not in the table).

    Returns ``(iso_codes, problems)``; ``problems`` maps each task whose code lang2vec's
    ``URIEL_LANGUAGES`` lacks (or that has no code) to the reason. Those are reported (a
    warning, the trace's meta ``"iso_problems"`` and the run summary), not dropped: the code is
    still stored, and the typology analyses decide whether they have features for it.
    """
    codes: dict[str, str | None] = {}
    problems: dict[str, str] = {}
    for task in tasks:
        lang = LANGUAGES.get(task)
        if lang is None:
            codes[task] = None
            problems[task] = "not in the locale table"
            continue
        codes[task] = lang.iso639_3
        if not in_uriel(lang.iso639_3):
            problems[task] = f"{lang.iso639_3} is not in lang2vec's URIEL_LANGUAGES"
    for task, why in problems.items():
        log.warning("language %s: %s", task, why)
    return codes, problems
