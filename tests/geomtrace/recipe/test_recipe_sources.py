"""The corpus domains beyond Django: real installed catalogs (the ``corpus`` extra), the
locale folder names of each project, cross-domain deduplication, the split shared by every
domain, the domain check, and the ``--list-languages`` table of counts."""

import collections

import pytest

from geomtrace import InvalidInputError
from geomtrace.recipe.config import RecipeConfig
from geomtrace.recipe.corpus import (
    DOMAINS,
    TEXT_DOMAINS,
    build_corpus,
    check_domains,
    domain_catalogs,
    locale_folders,
    package_dir,
    probe_strings,
    select_short,
    split_of,
)

LANGS = ["fr", "ru", "ja", "he", "zh_Hans"]


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(LANGS, TEXT_DOMAINS)


def test_locale_folders_of_other_projects():
    assert locale_folders("fr") == ["fr", "fr_FR"]
    assert locale_folders("zh_Hans") == ["zh_Hans", "zh_CN", "zh_SG"]
    assert locale_folders("nb") == ["nb", "nb_NB", "nb_NO", "no", "no_NO"]
    assert locale_folders("he") == ["he", "he_HE", "he_IL"]
    # a regional variant reads only its own folder: pt_BR is not pt
    assert locale_folders("pt_BR") == ["pt_BR"]
    assert "pt_BR" not in locale_folders("pt")


def test_every_text_domain_has_real_catalogs_for_french():
    for domain in TEXT_DOMAINS:
        files = domain_catalogs(domain, "fr")
        assert files, domain
        assert all(f.suffix in (".po", ".mo") for f in files)
        assert all(f.parent.name == "LC_MESSAGES" for f in files)
    jl = domain_catalogs("jupyterlab", "fr")
    assert {f.parent.parent.name for f in jl} == {"fr_FR"}  # the fr-FR pack's own folder
    assert "jupyterlab.mo" in {f.name for f in jl}
    assert domain_catalogs("jupyterlab", "mr") == []  # no Marathi pack: nothing, no error
    # other projects' folder names: the no-NO pack is Bokmal, zh-CN is zh_Hans, he_IL is he
    assert {f.parent.parent.name for f in domain_catalogs("jupyterlab", "nb")} == {"no_NO"}
    assert {f.parent.parent.name for f in domain_catalogs("jupyterlab", "zh_Hans")} == {"zh_CN"}
    assert {f.parent.parent.name for f in domain_catalogs("jupyterlab", "he")} == {"he_IL"}
    assert domain_catalogs("jupyterlab", "pt") == []  # pt-BR's pack is not European Portuguese
    assert {f.parent.parent.name for f in domain_catalogs("jupyterlab", "pt_BR")} == {"pt_BR"}


def test_each_domain_adds_what_it_holds(corpus):
    by = corpus.domain_counts()
    fr = {d: c["total"] for d, c in by["fr"].items()}
    # measured on the pinned packages of the corpus extra (orders of magnitude, so an update
    # of a package does not break the test; a broken reader gives 0 or everything)
    assert 700 <= fr["django"] <= 900
    assert 1000 <= fr["wagtail"] <= 2500
    assert 1200 <= fr["jupyterlab"] <= 4000
    assert 200 <= fr["sphinx"] <= 1000
    assert 100 <= fr["allauth"] <= 500
    assert sum(fr.values()) == len(corpus.pairs["fr"]) >= 4000
    for lang in LANGS:
        pairs = corpus.pairs[lang]
        assert len({p.en for p in pairs}) == len(pairs)  # one translation per English string
        assert {p.domain for p in pairs} <= set(TEXT_DOMAINS)
        assert all(p.en and p.x.strip() for p in pairs)
        # the header, plurals and duplicates are excluded and counted
        assert corpus.skipped[lang]["plural"] > 0
        assert corpus.skipped[lang]["duplicate"] > 0


def test_domain_order_decides_which_translation_a_shared_string_keeps():
    a = build_corpus(["de"], ["django", "wagtail"])
    b = build_corpus(["de"], ["wagtail", "django"])
    assert {p.en for p in a.pairs["de"]} == {p.en for p in b.pairs["de"]}
    dom_a = {p.en: p.domain for p in a.pairs["de"]}
    dom_b = {p.en: p.domain for p in b.pairs["de"]}
    django_only = {p.en for p in build_corpus(["de"], ["django"]).pairs["de"]}
    wagtail_only = {p.en for p in build_corpus(["de"], ["wagtail"]).pairs["de"]}
    shared = django_only & wagtail_only
    assert len(shared) >= 50  # both projects translate "Save", "Delete", ...
    assert all(dom_a[en] == "django" and dom_b[en] == "wagtail" for en in shared)
    assert len(a.pairs["de"]) == len(django_only | wagtail_only)
    assert a.skipped["de"]["duplicate"] >= len(shared)


def test_no_test_string_is_trained_on_in_any_language_or_domain(corpus):
    train = set().union(*({p.en for p in corpus.split(lg, "train")} for lg in LANGS))
    test = set().union(*({p.en for p in corpus.split(lg, "test")} for lg in LANGS))
    assert not train & test
    # the same English string is in the same split in every language: the test strings of
    # French and Chinese overlap wherever both translate a string
    fr = {p.en for p in corpus.pairs["fr"]}
    zh = {p.en for p in corpus.pairs["zh_Hans"]}
    test_fr = {p.en for p in corpus.split("fr", "test")}
    test_zh = {p.en for p in corpus.split("zh_Hans", "test")}
    assert test_fr & zh == test_zh & fr and len(test_fr & test_zh) >= 200
    assert all(split_of(en) == "test" for en in test_fr)
    # the test fraction holds in the bigger corpus too
    counts = corpus.counts()
    for lang in LANGS:
        c = counts[lang]
        assert 0.08 < c["test"] / c["total"] < 0.12, (lang, c)


def test_the_new_sources_give_hundreds_of_test_strings(corpus):
    """What the domains are for: >= 200 test strings of at most 40 bytes per language where
    Django alone gives ~60, and >= 400 train strings shared by all five languages."""
    django = build_corpus(LANGS, ["django"])
    for lang in LANGS:
        assert django.counts(40)[lang]["test"] < 70
        assert corpus.counts(40)[lang]["test"] >= 200, lang
    short = type(corpus)({lg: select_short(corpus.pairs[lg], 40) for lg in LANGS}, corpus.skipped)
    assert len(probe_strings(short, "train", size=10_000)) >= 400


def test_counts_at_a_length_cap_match_the_selection(corpus):
    pairs = corpus.pairs["ja"]
    for cap in (30, 60):
        kept = select_short(pairs, cap)
        assert all(len(p.en.encode()) <= cap and len(p.x.encode()) <= cap for p in kept)
        c = corpus.counts(cap)["ja"]
        assert c["total"] == len(kept)
        by = corpus.domain_counts(cap)["ja"]
        assert sum(d["test"] for d in by.values()) == c["test"]
        assert sum(d["train"] for d in by.values()) == c["train"]


def test_check_domains_names_the_bad_value():
    assert check_domains(("django", "wagtail")) == ["django", "wagtail"]
    assert check_domains("sphinx") == ["sphinx"]
    with pytest.raises(InvalidInputError, match="unknown 'wagtial'.*allowed: django, wagtail"):
        check_domains(["django", "wagtial"])
    with pytest.raises(InvalidInputError, match="empty"):
        check_domains([])
    with pytest.raises(InvalidInputError, match="listed twice: django"):
        check_domains(["django", "django"])
    with pytest.raises(InvalidInputError, match="unknown 'nope'"):
        RecipeConfig(domains=["nope"]).validate()
    assert RecipeConfig(domains=list(DOMAINS)).validate().domains == list(DOMAINS)


def test_missing_package_says_what_to_install():
    with pytest.raises(InvalidInputError, match="'wagtail'.*geomtrace\\[corpus\\]"):
        package_dir("wagtail", "geomtrace_no_such_package")


def test_language_table_lists_counts_per_source():
    from geomtrace.recipe import language_table

    config = RecipeConfig(domains=["django", "wagtail"], max_bytes=40)
    table = language_table(config, ["fr", "mr"]).splitlines()
    header = table[1].split()
    assert header[:6] == ["locale", "iso", "script", "family", "run", "all"]
    assert header[6 : 6 + len(TEXT_DOMAINS)] == list(TEXT_DOMAINS)
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert set(rows) == {"fr", "mr"}
    run = build_corpus(["fr"], ["django", "wagtail"]).counts(40)["fr"]
    assert rows["fr"][4] == f"{run['train']}/{run['test']}"
    every = build_corpus(["fr", "mr"], TEXT_DOMAINS)
    by = every.domain_counts(40)
    for k, domain in enumerate(TEXT_DOMAINS):
        c = by["fr"][domain]
        assert rows["fr"][6 + k] == f"{c['train']}/{c['test']}"
    total = every.counts(40)["fr"]
    assert rows["fr"][5] == f"{total['train']}/{total['test']}"
    # Marathi: Django only, so the other sources show "-"
    assert rows["mr"][7 : 6 + len(TEXT_DOMAINS)] == ["-"] * (len(TEXT_DOMAINS) - 1)


def test_fresh_snapshot_rows_never_repeat_a_row():
    import torch

    from geomtrace.recipe.embedded import fresh_rows

    gen = torch.Generator().manual_seed(0)
    picks = fresh_rows([500, 40, 96], 96, gen)
    assert [len(p) for p in picks] == [96, 40, 96]
    for p, n in zip(picks, [500, 40, 96], strict=True):
        assert len(set(p.tolist())) == len(p)  # no row twice: the halves are disjoint
        assert int(p.min()) >= 0 and int(p.max()) < n
    # uniform: over many draws every row of a 20-row language is picked about equally often
    counts = collections.Counter()
    for _ in range(2000):
        counts.update(fresh_rows([20], 10, gen)[0].tolist())
    assert set(counts) == set(range(20))
    assert max(counts.values()) / min(counts.values()) < 1.25


def test_default_experiment_meets_the_data_criteria():
    """The default experiment (issue 21): every language >= 200 test strings at its length cap,
    >= 400 train strings translated in all of them, >= ``snapshot_rows`` distinct training rows
    per language for the fresh snapshot batch (no row twice within a snapshot)."""
    from geomtrace.recipe.config import preset

    config = preset("default").validate()
    corpus = build_corpus(config.langs, config.domains)
    counts = corpus.counts(config.max_bytes)
    assert min(counts[lg]["test"] for lg in config.langs) >= 200
    assert min(counts[lg]["train"] for lg in config.langs) >= config.snapshot_rows
    short = type(corpus)(
        {lg: select_short(corpus.pairs[lg], config.max_bytes) for lg in config.langs},
        corpus.skipped,
    )
    assert len(probe_strings(short, "train", size=10_000)) >= 400
    # the full (GPU) preset reads every text domain too


def test_full_preset_languages_are_every_locale_with_200_test_strings():
    """``--preset full`` (issue 21, item 4): exactly the base locales with >= 200 test strings
    of <= 128 bytes over every text domain."""
    from geomtrace.recipe.config import preset
    from geomtrace.recipe.languages import LANGUAGES, VARIANT_BASE

    config = preset("full")  # not validated: its device is CUDA, which this machine may lack
    assert config.domains == list(TEXT_DOMAINS)
    bases = [loc for loc in LANGUAGES if loc not in VARIANT_BASE]
    counts = build_corpus(bases, config.domains, allow_empty=True).counts(config.max_bytes)
    assert config.langs == [loc for loc in bases if counts[loc]["test"] >= 200]
