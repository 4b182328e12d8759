"""The language table of ``geomtrace trace --list-languages``: each language's train/test pairs
per corpus source."""

from __future__ import annotations

from geomtrace import InvalidInputError


def language_table(config=None, languages=None) -> str:
    """The language table with each language's train/test pairs per corpus source.

    Counts are those a run would use: pairs of at most ``config.max_bytes`` bytes (both sides),
    split by ``config.test_fraction``/``dev_fraction``. ``run`` is the run's ``domains``;
    each source column is what that source adds when every installed source is read, in the
    order of the columns (an English string counts for the first source that has it);
    a source whose package is missing is left out with a note. ``languages``: the rows to
    show (default: every locale of the table).
    """
    from geomtrace.recipe.config import RecipeConfig
    from geomtrace.recipe.corpus import DOMAINS, TEXT_DOMAINS, build_corpus, domain_catalogs
    from geomtrace.recipe.languages import LANGUAGES, NOT_IN_URIEL

    config = config or RecipeConfig()
    langs = list(LANGUAGES) if languages is None else list(languages)
    fractions = {"dev_fraction": config.dev_fraction, "test_fraction": config.test_fraction}
    wanted = list(dict.fromkeys([*TEXT_DOMAINS, *config.domains]))
    sources, missing = [], []
    for d in wanted:
        try:
            domain_catalogs(d, "fr")  # raises when the domain's package is not installed
            sources.append(d)
        except InvalidInputError:
            missing.append(d)
    run_domains = [d for d in DOMAINS if d in config.domains and d in sources]
    run_domains = [d for d in config.domains if d in run_domains]
    run = build_corpus(langs, run_domains, **fractions, allow_empty=True).counts(config.max_bytes)
    every = build_corpus(langs, sources, **fractions, allow_empty=True)
    by_source = every.domain_counts(config.max_bytes)
    total = every.counts(config.max_bytes)

    def cell(c) -> str:
        return f"{c['train']}/{c['test']}" if c and c["total"] else "-"

    width = {d: max(len(d), 9) for d in sources}
    lines = [
        f"train/test pairs of at most {config.max_bytes} bytes (test fraction "
        f"{config.test_fraction}); run = the run's domains ({', '.join(config.domains)}), "
        "then what each source adds in this order:",
        f"{'locale':<8} {'iso':<4} {'script':<5} {'family':<14} {'run':>9} {'all':>9} "
        + " ".join(f"{d:>{width[d]}}" for d in sources)
        + "  name / note",
    ]
    for row in (LANGUAGES[lg] for lg in langs):
        flag = " [not in URIEL]" if row.iso639_3 in NOT_IN_URIEL else ""
        note = f" ({row.note})" if row.note else ""
        loc = row.locale
        lines.append(
            f"{loc:<8} {row.iso639_3:<4} {row.script:<5} {row.family:<14} "
            f"{cell(run[loc]):>9} {cell(total[loc]):>9} "
            + " ".join(f"{cell(by_source[loc].get(d)):>{width[d]}}" for d in sources)
            + f"  {row.name}{note}{flag}"
        )
    if missing:
        lines.append(
            f"not installed: {', '.join(missing)} (pip install 'geomtrace[corpus]'; "
            "scripts/setup.sh installs it)"
        )
    return "\n".join(lines)
