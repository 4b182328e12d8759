"""ISO 639-3 codes a run's typology can use: one unknown code leaves its task out, not the run.

A run's tasks carry ISO codes (``Tracer(iso_codes=...)``); the typological distances need a
URIEL feature vector for each (``analyses.uriel_feature_codes``). ``typology`` (the command)
refuses an unknown code, since the user typed it; ``analyze`` and ``group`` read codes that a
recipe stored, and one code lang2vec does not know (a typo, a private-use code) should cost
that task its typology, with a note naming it, not the whole run its analysis.
"""

from __future__ import annotations

from collections.abc import Mapping


def usable_iso_codes(iso_codes: Mapping[str, str | None] | None) -> tuple[dict[str, str], str]:
    """``({task: code} for codes with URIEL features (lower case), note)``.

    ``note`` names the tasks whose code is unknown and says they are left out of the
    typology and families ("" when every given code is known).
    """
    from analyses._typology import uriel_feature_codes

    codes = {t: str(c).strip().lower() for t, c in (iso_codes or {}).items() if c}
    if not codes:
        return {}, ""
    known = set(uriel_feature_codes())
    unknown = {t: c for t, c in codes.items() if c not in known}
    if not unknown:
        return codes, ""
    named = ", ".join(f"{t} ({c!r})" for t, c in unknown.items())
    note = (
        f"ISO 639-3 code(s) without URIEL features: {named}; left out of the typology and "
        "family analyses (the similarity analyses keep them)"
    )
    return {t: c for t, c in codes.items() if t not in unknown}, note


__all__ = ["usable_iso_codes"]
