"""An English <-> X parallel corpus from the gettext catalogs installed Python packages ship.

Domains:

- ``"django"`` (default): ``django/conf/locale/<loc>/LC_MESSAGES/*.po`` and
  ``django/contrib/*/locale/<loc>/LC_MESSAGES/*.po``: ~800 UI strings in ~95 languages. The
  ``msgid`` is the English source, the ``msgstr`` its translation.
- ``"pycountry"`` (opt-in): the ISO 3166-1 country names pycountry ships translated. They are
  mostly proper names, which share many bytes across languages and inflate byte-overlap effects;
  they are labelled with their domain so analyses can tell them apart.

Catalogs are read with polib (``.po`` preferred: only it carries the fuzzy flag and obsolete
entries; a ``.mo`` is read when no ``.po`` sits next to it). Kept: translated singular entries.
Excluded, and counted per reason: the header, obsolete (``#~``), fuzzy, untranslated (empty
``msgstr``), plural (``msgid_plural``) entries, and duplicates (the first translation of an English
string wins, catalogs visited in sorted path order, so the result is deterministic). Placeholders
(``%(name)s``, ``{0}``) are kept as they are.

The split is a pure function of the English string (:func:`split_of`, blake2b), so it is the
same in every language: no English sentence of the test split is seen in training in any language.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geomtrace import InvalidInputError
from geomtrace.recipe.languages import LANGUAGES

log = logging.getLogger(__name__)

DOMAINS = ("django", "pycountry")
SPLITS = ("train", "dev", "test")

# pycountry names some locales differently from Django.
_PYCOUNTRY_LOCALE = {"zh_Hans": "zh_CN", "zh_Hant": "zh_TW", "sr_Latn": "sr@latin", "nb": "nb_NO"}


@dataclass(frozen=True)
class Pair:
    """One parallel entry: the English string, its translation, and where it came from."""

    en: str
    x: str
    domain: str


@dataclass
class Corpus:
    """Parallel pairs per language, with what was skipped and why."""

    pairs: dict[str, list[Pair]]
    skipped: dict[str, collections.Counter] = field(default_factory=dict)
    dev_fraction: float = 0.05
    test_fraction: float = 0.10

    @property
    def languages(self) -> list[str]:
        return list(self.pairs)

    def split(self, lang: str, split: str) -> list[Pair]:
        """Pairs of ``lang`` whose English string falls in ``split`` ("train", "dev", "test")."""
        if split not in SPLITS:
            raise InvalidInputError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        return [
            p
            for p in self.pairs[lang]
            if split_of(p.en, self.dev_fraction, self.test_fraction) == split
        ]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{lang: {"train": n, "dev": n, "test": n, "total": n}}``."""
        out: dict[str, dict[str, int]] = {}
        for lang, pairs in self.pairs.items():
            c = collections.Counter(
                split_of(p.en, self.dev_fraction, self.test_fraction) for p in pairs
            )
            out[lang] = {s: c.get(s, 0) for s in SPLITS} | {"total": len(pairs)}
        return out


def split_of(en: str, dev_fraction: float = 0.05, test_fraction: float = 0.10) -> str:
    """The split of an English string: u = blake2b-64(en) / 2^64 in [0, 1);
    test if u < test_fraction, dev if u < test_fraction + dev_fraction, train otherwise.

    A pure function of the string (not Python's salted ``hash``): identical across languages,
    processes and machines.
    """
    digest = hashlib.blake2b(en.encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + dev_fraction:
        return "dev"
    return "train"


def hash_order(en: str) -> int:
    """A deterministic sort key for English strings (blake2b, salted apart from the split)."""
    return int.from_bytes(hashlib.blake2b(b"order:" + en.encode("utf-8"), digest_size=8).digest())


def django_locale_dirs() -> list[Path]:
    """The ``locale`` folders of the installed Django (core and every contrib app)."""
    import django  # heavy-ish, and only the corpus needs it

    root = Path(django.__file__).parent
    dirs = [root / "conf" / "locale"]
    dirs += sorted(p for p in (root / "contrib").glob("*/locale") if p.is_dir())
    return dirs


def pycountry_locale_dir() -> Path:
    import pycountry

    return Path(pycountry.__file__).parent / "locales"


def catalog_files(locale_dir: Path, locale: str, names: Sequence[str] | None = None) -> list[Path]:
    """Catalogs of one locale under ``locale_dir/<locale>/LC_MESSAGES``, sorted.

    A ``.po`` is preferred to the ``.mo`` of the same name (it keeps fuzzy and obsolete entries,
    which must be excluded, and msgfmt may have compiled fuzzy ones with ``--use-fuzzy``).
    ``names`` restricts to catalog stems (e.g. ``["iso3166-1"]``).
    """
    folder = Path(locale_dir) / locale / "LC_MESSAGES"
    if not folder.is_dir():
        return []
    stems: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".po", ".mo"):
            continue
        if names is not None and path.stem not in names:
            continue
        if path.suffix == ".po" or path.stem not in stems:
            stems[path.stem] = path
    return [stems[s] for s in sorted(stems)]


def read_catalog(path: str | os.PathLike) -> tuple[list[tuple[str, str]], collections.Counter]:
    """Translated singular entries of one ``.po``/``.mo`` as (English, translation) pairs.

    Returns the pairs in file order and a Counter of excluded entries by reason
    ("header", "obsolete", "fuzzy", "untranslated", "plural").
    """
    import polib

    path = Path(path)
    catalog = polib.mofile(str(path)) if path.suffix == ".mo" else polib.pofile(str(path))
    skipped: collections.Counter = collections.Counter()
    pairs: list[tuple[str, str]] = []
    # polib lists obsolete entries in iteration too (entry.obsolete); count them explicitly.
    for entry in catalog:
        if entry.msgid == "":
            skipped["header"] += 1
        elif getattr(entry, "obsolete", False):
            skipped["obsolete"] += 1
        elif entry.msgid_plural:
            skipped["plural"] += 1
        elif "fuzzy" in entry.flags:
            skipped["fuzzy"] += 1
        elif not entry.msgstr.strip():
            skipped["untranslated"] += 1
        else:
            pairs.append((entry.msgid, entry.msgstr))
    return pairs, skipped


def read_locale(files: Iterable[Path], domain: str) -> tuple[list[Pair], collections.Counter]:
    """Pairs from several catalogs of one language, deduplicated by English string."""
    seen: set[str] = set()
    out: list[Pair] = []
    skipped: collections.Counter = collections.Counter()
    for path in files:
        pairs, why = read_catalog(path)
        skipped.update(why)
        for en, x in pairs:
            if en in seen:
                skipped["duplicate"] += 1
                continue
            seen.add(en)
            out.append(Pair(en, x, domain))
    return out, skipped


def build_corpus(
    languages: Sequence[str],
    domains: Sequence[str] = ("django",),
    locale_dirs: Sequence[str | os.PathLike] | None = None,
    dev_fraction: float = 0.05,
    test_fraction: float = 0.10,
) -> Corpus:
    """The parallel corpus of ``languages`` (locale keys of the table, e.g. ``"zh_Hans"``).

    ``locale_dirs`` replaces the installed catalogs with folders laid out as
    ``<dir>/<locale>/LC_MESSAGES/*.po|*.mo`` (domain label ``"custom"``); tests use it. An English
    string that is in both domains keeps its Django translation. A language with no catalog
    raises :class:`InvalidInputError`.
    """
    for d in domains:
        if d not in DOMAINS:
            raise InvalidInputError(f"unknown corpus domain {d!r}; allowed: {', '.join(DOMAINS)}")
    pairs: dict[str, list[Pair]] = {}
    skipped: dict[str, collections.Counter] = {}
    for lang in languages:
        sources: list[tuple[str, list[Path]]] = []
        if locale_dirs is not None:
            files = [f for d in locale_dirs for f in catalog_files(Path(d), lang)]
            sources.append(("custom", files))
        else:
            if "django" in domains:
                files = [f for d in django_locale_dirs() for f in catalog_files(d, lang)]
                sources.append(("django", files))
            if "pycountry" in domains:
                loc = _PYCOUNTRY_LOCALE.get(lang, lang)
                files = catalog_files(pycountry_locale_dir(), loc, names=["iso3166-1"])
                sources.append(("pycountry", files))
        got: list[Pair] = []
        why: collections.Counter = collections.Counter()
        seen: set[str] = set()
        for domain, files in sources:
            part, w = read_locale(files, domain)
            why.update(w)
            for p in part:
                if p.en in seen:
                    why["duplicate"] += 1
                    continue
                seen.add(p.en)
                got.append(p)
        if not got:
            known = "" if lang in LANGUAGES else " (not in the locale table)"
            raise InvalidInputError(
                f"no translated catalog entries for language {lang!r}{known}; "
                f"available: {' '.join(sorted(LANGUAGES))}"
            )
        pairs[lang] = got
        skipped[lang] = why
        log.debug("corpus %s: %d pairs, skipped %s", lang, len(got), dict(why))
    return Corpus(pairs, skipped, dev_fraction, test_fraction)


def probe_strings(corpus: Corpus, split: str = "train", size: int = 16) -> list[str]:
    """English strings of ``split`` translated in *every* language of the corpus (multi-way
    parallel), the first ``size`` in :func:`hash_order`. The tracer's probe batches use them so
    every language's probe gradient is taken on the same content."""
    common: set[str] | None = None
    for lang in corpus.languages:
        ens = {p.en for p in corpus.split(lang, split)}
        common = ens if common is None else common & ens
    return sorted(common or (), key=hash_order)[:size]


def parallel_strings(
    languages: Sequence[str], size: int, split: str = "train"
) -> dict[str, list[str]]:
    """``size`` multi-way-parallel translations: ``{lang: [x_1 .. x_size]}`` where x_n of every
    language translates the same English string (Django catalogs, :func:`probe_strings` order).
    For examples and tests that need a little real multilingual text."""
    corpus = build_corpus(languages)
    english = probe_strings(corpus, split, size)
    if len(english) < size:
        raise InvalidInputError(
            f"only {len(english)} {split} strings are translated in all of {list(languages)}; "
            f"asked for {size}"
        )
    out = {}
    for lang in corpus.languages:
        translation = {p.en: p.x for p in corpus.split(lang, split)}
        out[lang] = [translation[en] for en in english]
    return out


def char_profile(texts: Iterable[str], top: int = 300) -> dict[str, float]:
    """Relative frequency of each non-whitespace character over ``texts``, top ``top`` kept
    (frequencies are relative to all characters, so they need not sum to 1 after the cut)."""
    counts: collections.Counter = collections.Counter()
    for t in texts:
        counts.update(ch for ch in t if not ch.isspace())
    total = sum(counts.values())
    if total == 0:
        return {}
    return {ch: n / total for ch, n in counts.most_common(top)}
