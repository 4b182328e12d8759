"""Typological distances between languages from lang2vec's URIEL data (ISO 639-3 codes).

lang2vec 1.1.2 ships feature vectors, not distances; every distance here is ours:

- syntactic / phonological / inventory: cosine distance 1 - a.b / (|a||b|) between the
  ``syntax_knn`` (103 features), ``phonology_knn`` (28) and ``inventory_knn`` (158) vectors
  (URIEL's kNN-completed 0/1 features, so every language has a full vector).
- featural: cosine distance between the three vectors concatenated (289 features).
- geographic: great-circle distance in km between the languages' coordinates. lang2vec's
  ``geo`` vector holds, for 299 fixed points on the globe, the angular distance from the
  language to the point divided by pi; we recover each language's (lat, lon) by least squares
  over those 299 distances (coarse 2-degree grid, then Nelder-Mead), then use the haversine
  formula with R = 6371.0088 km.
- genetic: from the language's Glottolog path in the ``fam`` features (the set of Glottolog
  nodes above the language, ordered root first by decreasing size): with d_a, d_b the path
  depths and s the number of shared nodes, distance = 1 - s / max(d_a, d_b); 0 on the
  diagonal, 1 across families. (Cosine on ``fam`` vectors is 0 across families and dominated
  by ties, which made it uninformative.) A language with an empty path (an isolate such as
  Basque, or an unclassified code) is its own family, at distance 1 from every other.

Individual codes without data for a feature set read their macrolanguage's data for that set
only (``MACROLANGUAGE_FALLBACK``, e.g. ``ekk -> est`` for the Glottolog path); never silently.

Family = first node of the path (top-level Glottolog family), genus = second node (the family
itself when the path has one node); a language with no path gets its ISO code as family.

Data are read from lang2vec's own data files (the same arrays ``lang2vec.get_features``
reads) because ``get_features(..., "fam")`` takes ~6 s; the per-language result is cached on
disk under ``$GEOMTRACE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/geomtrace`` or
``~/.cache/geomtrace``), keyed by the language set, the lang2vec version and a format version.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from geomtrace import GeomtraceError, InvalidInputError

log = logging.getLogger(__name__)

#: Individual language -> its ISO 639-3 macrolanguage, read for a feature set only where
#: URIEL (lang2vec 1.1.2) has no data for the individual code. URIEL wants individual codes
#: (the recipe maps locale ``et`` to ``ekk``), but its ``fam`` features give ``ekk``, ``lvs``
#: and ``nob`` an empty Glottolog path, which would make Estonian, Latvian and Bokmal isolates;
#: their macrolanguages ``est``, ``lav``, ``nor`` have the path (Uralic > Finnic, ...).
#: Checked against the data for the 24 default languages: only ``ekk`` lacks a feature set
#: (``fam``); ``arb``, ``azj``, ``cmn`` have every set themselves, so they are not listed.
#: Every use is logged (INFO) and reported by :func:`language_families` (``source_code``,
#: ``note``) and in ``typological_distances(...)[kind].attrs["fallbacks"]``.
MACROLANGUAGE_FALLBACK: dict[str, str] = {"ekk": "est", "lvs": "lav", "nob": "nor"}
#: Feature set read for each distance (the names in ``language_data()["fallbacks"]``).
_SOURCES = {
    "syntactic": "syntactic", "phonological": "phonological", "inventory": "inventory",
    "featural": ("syntactic", "phonological", "inventory"), "geographic": "geographic",
    "genetic": "genetic",
}  # fmt: skip
DISTANCES = ("syntactic", "phonological", "inventory", "geographic", "featural", "genetic")
_FEATURE_SETS = {"syntactic": "S_", "phonological": "P_", "inventory": "INV_"}
FAMILY_COLUMNS = [
    "language", "family", "genus", "depth", "path", "latitude", "longitude", "source_code", "note",
]  # fmt: skip
_CACHE_FORMAT = 2  # 2: macrolanguage fallbacks
EARTH_RADIUS_KM = 6371.0088


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Directory of the typology cache: ``override``, $GEOMTRACE_CACHE_DIR, or the user cache."""
    if override is not None:
        return Path(override)
    if os.environ.get("GEOMTRACE_CACHE_DIR"):
        return Path(os.environ["GEOMTRACE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geomtrace"


@lru_cache(maxsize=1)
def _lang2vec_data() -> tuple[Path, str]:
    from importlib import metadata

    # Located through the installed distribution, not an import: lang2vec installs a
    # ``bin/lang2vec.py`` script that shadows the package whenever bin/ is on sys.path
    # (e.g. under ``.venv/bin/pytest``), and importing it costs seconds.
    try:
        dist = metadata.distribution("lang2vec")
    except metadata.PackageNotFoundError:
        raise GeomtraceError("typology needs lang2vec: pip install 'lang2vec>=1.1.2'") from None
    data = Path(str(dist.locate_file("lang2vec/data")))
    if not (data / "family_features.npz").exists():
        raise GeomtraceError(f"lang2vec's data files are missing from {data}")
    return data, dist.version


@lru_cache(maxsize=1)
def uriel_feature_codes() -> tuple[str, ...]:
    """Every ISO 639-3 code lang2vec's feature files carry a vector for (sorted; 7970 codes).

    Not lang2vec's ``URIEL_LANGUAGES`` (3718 codes with a complete family vector, which
    ``geomtrace.recipe.languages.uriel_languages`` reproduces to flag recipe languages):
    the typology here can use any code with features, imputed (kNN) ones included.
    """
    data, _ = _lang2vec_data()
    with np.load(data / "feature_predictions.npz") as f:
        return tuple(sorted(str(x) for x in f["langs"]))


def _suggest(code: str) -> list[str]:
    """Close matches for an unknown code: ISO 639-1 mapping, language names, similar codes."""
    data, _ = _lang2vec_data()
    known = set(uriel_feature_codes())
    out: list[str] = []
    letter = json.loads((data / "letter_codes.json").read_text())
    if code in letter and letter[code] in known:
        out.append(letter[code])
    try:
        import pycountry

        hit = pycountry.languages.lookup(code)
        alpha3 = getattr(hit, "alpha_3", None)
        if alpha3 in known and alpha3 not in out:
            out.append(f"{alpha3} ({hit.name})")
    except (LookupError, ImportError):
        pass
    out += [
        c for c in difflib.get_close_matches(code, sorted(known), n=3, cutoff=0.6) if c not in out
    ]
    return out[:4]


def check_languages(languages: Sequence[str]) -> list[str]:
    """Normalise ISO 639-3 codes (lower case) and refuse unknown ones, suggesting matches."""
    if isinstance(languages, str):
        raise InvalidInputError(f"expected a list of ISO 639-3 codes, got the string {languages!r}")
    codes = [str(c).strip().lower() for c in languages]
    if len(set(codes)) != len(codes):
        dup = sorted({c for c in codes if codes.count(c) > 1})
        raise InvalidInputError(f"duplicate language codes: {dup}")
    known = set(uriel_feature_codes())
    bad = [c for c in codes if c not in known]
    if bad:
        parts = []
        for c in bad:
            s = _suggest(c)
            parts.append(f"{c!r}" + (f" (did you mean {', '.join(s)}?)" if s else ""))
        raise InvalidInputError(
            "unknown ISO 639-3 code(s) without URIEL features: " + "; ".join(parts)
        )
    return codes


def _unit(lat, lon):
    lat, lon = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)


@lru_cache(maxsize=2)
def _grid_angles(anchor_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A 2-degree (lat, lon) grid and its normalised angular distances to the anchors."""
    anchors = np.frombuffer(anchor_bytes).reshape(-1, 2)
    lat, lon = np.meshgrid(np.arange(-89.0, 90.0, 2.0), np.arange(-180.0, 180.0, 2.0))
    grid = np.stack([lat.ravel(), lon.ravel()], 1)
    a_xyz = _unit(anchors[:, 0], anchors[:, 1])
    g = np.arccos(np.clip(_unit(grid[:, 0], grid[:, 1]) @ a_xyz.T, -1, 1)) / np.pi  # [N, A]
    return grid, g


def _fit_coordinates(angles: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(lat, lon) in degrees per language from its normalised angular distances to the anchors.

    angles [n, A] in [0, 1] (angle / pi), anchors [A, 2] (lat, lon). Least squares: a 2-degree
    grid (vectorised over languages) then Nelder-Mead from the best grid point.
    """
    from scipy.optimize import minimize

    unit = _unit
    a_xyz = unit(anchors[:, 0], anchors[:, 1])
    grid, g = _grid_angles(anchors.tobytes())
    # ||g - v||^2 = |g|^2 - 2 g.v + |v|^2: one matrix product for all languages.
    err = (g * g).sum(1)[:, None] - 2 * g @ angles.T
    start = grid[np.argmin(err, axis=0)]
    out = np.empty((len(angles), 2))
    for i, v in enumerate(angles):

        def loss(p, v=v):
            d = np.arccos(np.clip(unit(p[0], p[1]) @ a_xyz.T, -1, 1)) / np.pi
            return float(((d - v) ** 2).sum())

        res = minimize(
            loss, start[i], method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-12}
        )
        lat_i, lon_i = res.x
        out[i] = (np.clip(lat_i, -90, 90), (lon_i + 180) % 360 - 180)
        rms = np.sqrt(res.fun / len(v)) * 180
        if rms > 2:
            log.warning("geo features of language %d fit coordinates poorly (rms %.1f deg)", i, rms)
    return out


@lru_cache(maxsize=1)
def _uriel() -> dict:
    """lang2vec's arrays, decompressed once per process (~2 s) in a compact form (~20 MB)."""
    data, _ = _lang2vec_data()
    out: dict = {}
    with np.load(data / "feature_predictions.npz") as f:
        out["knn_index"] = {str(c): i for i, c in enumerate(f["langs"])}
        out["knn_feats"] = np.asarray(f["feats"]).astype(str)
        out["knn"] = f["data"][:, :, 0].astype(np.float32)
    with np.load(data / "geocoord_features.npz") as f:
        out["geo_index"] = {str(c): i for i, c in enumerate(f["langs"])}
        out["geo"] = f["data"][:, :, 0].astype(np.float32)
        out["anchors"] = np.array(
            [[float(x) for x in s[3:].split("_")] for s in f["feats"].astype(str)]
        )
    with np.load(data / "family_features.npz") as f:
        out["fam_index"] = {str(c): i for i, c in enumerate(f["langs"])}
        member = f["data"][:, :, 0] > 0.5  # [languages, Glottolog nodes]
        out["fam_names"] = np.asarray(f["feats"]).astype(str)
    rows, nodes = np.nonzero(member)
    out["fam_nodes"] = np.split(nodes, np.searchsorted(rows, np.arange(1, len(member))))
    # Node size over all languages orders a path root first (a parent has >= members than its
    # child); feature order breaks ties in single-child chains.
    out["fam_sizes"] = member.sum(axis=0)
    return out


def _has_data(u: dict, code: str, feature_set: str) -> bool:
    """Whether URIEL has ``feature_set`` for ``code`` (no -1 value; a non-empty fam path)."""
    if feature_set in _FEATURE_SETS:
        if code not in u["knn_index"]:
            return False
        row = u["knn"][u["knn_index"][code]]
        return not (row[np.char.startswith(u["knn_feats"], _FEATURE_SETS[feature_set])] < 0).any()
    if feature_set == "geographic":
        return code in u["geo_index"] and not (u["geo"][u["geo_index"][code]] < 0).any()
    return code in u["fam_index"] and len(u["fam_nodes"][u["fam_index"][code]]) > 0


def _source_codes(u: dict, codes: list[str]) -> dict[str, dict[str, str]]:
    """{code: {feature set: code to read}}: the code itself, or its macrolanguage
    (:data:`MACROLANGUAGE_FALLBACK`) where only the macrolanguage has that feature set."""
    out = {}
    for c in codes:
        out[c] = {}
        for feature_set in (*_FEATURE_SETS, "geographic", "genetic"):
            macro = MACROLANGUAGE_FALLBACK.get(c)
            own = _has_data(u, c, feature_set)
            use_macro = not own and macro is not None and _has_data(u, macro, feature_set)
            out[c][feature_set] = macro if use_macro else c
    return out


def _load_features(codes: list[str]) -> dict:
    """Per-language arrays the distances need, from lang2vec's data."""
    u = _uriel()
    src = _source_codes(u, codes)
    out: dict = {}
    for name, prefix in _FEATURE_SETS.items():
        rows = [u["knn_index"][src[c][name]] for c in codes]
        out[name] = u["knn"][rows][:, np.char.startswith(u["knn_feats"], prefix)]
        out[name] = out[name].astype(np.float64)
        if (out[name] < 0).any():
            missing = [c for c, r in zip(codes, out[name], strict=True) if (r < 0).any()]
            raise InvalidInputError(f"languages without URIEL {name} features: {missing}")
    missing = [c for c in codes if src[c]["geographic"] not in u["geo_index"]]
    if missing:
        raise InvalidInputError(f"languages without URIEL geographic features: {missing}")
    angles = u["geo"][[u["geo_index"][src[c]["geographic"]] for c in codes]].astype(np.float64)
    if (angles < 0).any():
        missing = [c for c, r in zip(codes, angles, strict=True) if (r < 0).any()]
        raise InvalidInputError(f"languages without URIEL geographic features: {missing}")
    out["coordinates"] = _fit_coordinates(angles, u["anchors"])
    paths = []
    for c in codes:
        k = u["fam_index"].get(src[c]["genetic"])
        nodes = [] if k is None else u["fam_nodes"][k]
        nodes = sorted(nodes, key=lambda n: (-u["fam_sizes"][n], n))
        paths.append([str(u["fam_names"][n]).removeprefix("F_") for n in nodes])
    out["paths"] = paths
    out["fallbacks"] = {
        c: {fs: used for fs, used in src[c].items() if used != c}
        for c in codes
        if any(used != c for used in src[c].values())
    }
    return out


def _cache_key(codes: list[str]) -> str:
    _, version = _lang2vec_data()
    blob = json.dumps([_CACHE_FORMAT, version, sorted(codes)])
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def language_data(languages: Sequence[str], *, cache: str | os.PathLike | None = None) -> dict:
    """Per-language typology data, from the on-disk cache when present.

    Returns ``{"languages": codes, "syntactic"|"phonological"|"inventory": [n, F] arrays,
    "coordinates": [n, 2] (lat, lon), "paths": list of Glottolog paths, "fallbacks":
    {code: {feature set: macrolanguage read instead}}}`` in input order; feature sets are
    syntactic, phonological, inventory, geographic, genetic (see
    :data:`MACROLANGUAGE_FALLBACK`).
    """
    codes = check_languages(languages)
    order = sorted(codes)
    folder = cache_dir(cache)
    path = folder / f"typology-{_cache_key(order)}.npz"
    loaded = None
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                loaded = {
                    k: f[k] for k in ("syntactic", "phonological", "inventory", "coordinates")
                }
                loaded["paths"] = json.loads(str(f["paths"]))
                loaded["fallbacks"] = json.loads(str(f["fallbacks"]))
                if list(f["languages"].astype(str)) != order:
                    loaded = None
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable typology cache %s (%s)", path, err)
            loaded = None
    if loaded is None:
        loaded = _load_features(order)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(
                tmp,
                languages=np.array(order),
                paths=np.array(json.dumps(loaded["paths"])),
                fallbacks=np.array(json.dumps(loaded["fallbacks"])),
                **{k: loaded[k] for k in ("syntactic", "phonological", "inventory", "coordinates")},
            )
            os.replace(tmp, path)  # atomic: concurrent readers never see half a file
        except OSError as err:
            log.warning("could not write the typology cache %s (%s)", path, err)
    pos = [order.index(c) for c in codes]
    out = {
        k: np.asarray(loaded[k])[pos]
        for k in ("syntactic", "phonological", "inventory", "coordinates")
    }
    out["paths"] = [loaded["paths"][p] for p in pos]
    out["languages"] = codes
    out["fallbacks"] = {c: loaded["fallbacks"][c] for c in codes if c in loaded["fallbacks"]}
    for c, used in out["fallbacks"].items():
        if c in _FALLBACKS_LOGGED:  # said once per process, not once per analysis
            continue
        _FALLBACKS_LOGGED.add(c)
        log.info(
            "URIEL has no %s data for %r: using its macrolanguage's (%s)",
            "/".join(used), c, ", ".join(f"{k}: {v}" for k, v in used.items()),
        )  # fmt: skip
    return out


_FALLBACKS_LOGGED: set[str] = set()


def _cosine_distance(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1)
    if (norms == 0).any():
        raise InvalidInputError("a language has an all-zero feature vector: cosine undefined")
    d = 1.0 - (v @ v.T) / np.outer(norms, norms)
    d = np.clip((d + d.T) / 2, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def great_circle_km(coordinates: np.ndarray) -> np.ndarray:
    """[n, n] haversine distances (km) between (lat, lon) rows in degrees."""
    lat, lon = np.radians(coordinates[:, 0]), np.radians(coordinates[:, 1])
    dlat = lat[:, None] - lat[None, :]
    dlon = lon[:, None] - lon[None, :]
    h = np.sin(dlat / 2) ** 2 + np.cos(lat)[:, None] * np.cos(lat)[None, :] * np.sin(dlon / 2) ** 2
    d = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
    np.fill_diagonal(d, 0.0)
    return d


def genetic_distance(paths: Sequence[Sequence[str]]) -> np.ndarray:
    """1 - shared / max(depth_a, depth_b) over Glottolog paths; 1 when either path is empty."""
    n = len(paths)
    d = np.ones((n, n))
    sets = [set(p) for p in paths]
    for i in range(n):
        for j in range(i + 1, n):
            depth = max(len(paths[i]), len(paths[j]))
            if depth and paths[i] and paths[j]:
                d[i, j] = d[j, i] = 1.0 - len(sets[i] & sets[j]) / depth
    np.fill_diagonal(d, 0.0)
    return d


def _distance_from_data(data: dict, kind: str) -> np.ndarray:
    if kind in _FEATURE_SETS:
        return _cosine_distance(data[kind])
    if kind == "featural":
        return _cosine_distance(np.concatenate([data[k] for k in _FEATURE_SETS], axis=1))
    if kind == "geographic":
        return great_circle_km(data["coordinates"])
    if kind == "genetic":
        return genetic_distance(data["paths"])
    raise InvalidInputError(f"unknown distance {kind!r}; allowed: {DISTANCES} or 'all'")


def _kinds(kinds: str | Sequence[str] | None) -> list[str]:
    if kinds is None or kinds == "all":
        return list(DISTANCES)
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    bad = [k for k in kinds if k not in DISTANCES]
    if bad:
        raise InvalidInputError(f"unknown distance(s) {bad}; allowed: {list(DISTANCES)} or 'all'")
    return kinds


def typological_distances(
    languages: Sequence[str],
    kinds: str | Sequence[str] | None = None,
    *,
    cache: str | os.PathLike | None = None,
) -> dict[str, pd.DataFrame]:
    """Distance matrices between ``languages`` (ISO 639-3), one per kind.

    Returns ``{kind: DataFrame}`` in the order asked (default: all of :data:`DISTANCES`); each
    frame is [n, n], index and columns the codes, symmetric with a zero diagonal. Units:
    cosine distances in [0, 1] for 0/1 features, km for geographic, [0, 1] for genetic.
    Each frame's ``attrs["fallbacks"]`` is {code: macrolanguage whose data it used} for the
    languages that had no data of their own for that kind (:data:`MACROLANGUAGE_FALLBACK`).
    """
    kinds = _kinds(kinds)
    data = language_data(languages, cache=cache)
    codes = data["languages"]
    out = {}
    for k in kinds:
        frame = pd.DataFrame(_distance_from_data(data, k), index=codes, columns=codes)
        sets = _SOURCES[k] if isinstance(_SOURCES[k], tuple) else (_SOURCES[k],)
        frame.attrs["fallbacks"] = {
            c: used[s] for c, used in data["fallbacks"].items() for s in sets if s in used
        }
        out[k] = frame
    return out


def typological_distance(
    languages: Sequence[str], kind: str = "syntactic", *, cache: str | os.PathLike | None = None
) -> pd.DataFrame:
    """One distance matrix (see :func:`typological_distances`)."""
    return typological_distances(languages, [kind], cache=cache)[kind]


def language_families(
    languages: Sequence[str], *, cache: str | os.PathLike | None = None
) -> pd.DataFrame:
    """Glottolog classification per language.

    Columns: language (ISO code), family (top-level node; the code itself for an isolate or an
    unclassified language), genus (second node; the family when the path has one node), depth
    (path length), path (nodes joined by " > "), latitude, longitude (fitted, degrees),
    source_code (the code whose Glottolog path was read: the language itself, or its
    macrolanguage when URIEL has no path for it, see :data:`MACROLANGUAGE_FALLBACK`), note
    (which feature sets came from the macrolanguage; empty when none did).
    """
    data = language_data(languages, cache=cache)
    rows = []
    for code, path, (lat, lon) in zip(
        data["languages"], data["paths"], data["coordinates"], strict=True
    ):
        family = path[0] if path else code
        genus = path[1] if len(path) > 1 else family
        used = data["fallbacks"].get(code, {})
        note = (
            f"no URIEL {'/'.join(used)} data for {code}: used macrolanguage "
            + ", ".join(sorted(set(used.values())))
            if used
            else ""
        )
        rows.append(
            (code, family, genus, len(path), " > ".join(path), lat, lon,
             used.get("genetic", code), note)
        )  # fmt: skip
    return pd.DataFrame(rows, columns=FAMILY_COLUMNS)


def task_families(
    iso_codes: Mapping[str, str | None],
    *,
    level: str = "family",
    cache: str | os.PathLike | None = None,
) -> dict[str, str]:
    """{task: family (or genus)} for the tasks that have an ISO code; others are left out."""
    if level not in ("family", "genus"):
        raise InvalidInputError(f"level {level!r}; allowed: 'family', 'genus'")
    tasks = [t for t, c in iso_codes.items() if c]
    codes = [str(iso_codes[t]).lower() for t in tasks]
    if not tasks:
        return {}
    table = language_families(list(dict.fromkeys(codes)), cache=cache).set_index("language")
    return {t: str(table.loc[c, level]) for t, c in zip(tasks, codes, strict=True)}


def task_family_table(
    codes: Mapping[str, str], cache: str | os.PathLike | None = None
) -> pd.DataFrame:
    """One row per task: task, its ISO code (``language``) and the language's row of
    :func:`language_families` (family, genus, depth as int64, ...)."""
    unique = list(dict.fromkeys(codes.values()))
    table = language_families(unique, cache=cache).set_index("language")
    rows = [{"task": t, "language": c} for t, c in codes.items()]
    frame = pd.DataFrame(rows).join(table, on="language")
    frame["depth"] = frame["depth"].astype(np.int64)
    return frame
