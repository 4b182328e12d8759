"""What a trace holds, in one screen (``geomtrace inspect``): tasks, groups, snapshots, and per
group the mean pair similarity with its interval and the reliability.

The numbers come from :func:`analyses.analyse_run` (``parts=["similarity"]``): the same
definitions ``analyze``, the report and the trace summary use.
"""

from __future__ import annotations

from typing import Any

from analyses._analyse_run import analyse_run
from analyses._measures import has_halves


def trace_summary(trace: Any, *, n_bootstrap: int = 200) -> dict[str, Any]:
    """JSON-ready summary of an open trace: path, tasks (with ISO 639-3 codes), per group
    (``all`` first) its size, parameter count, mean similarity over the snapshots after step
    0 with its bootstrap interval (``n_bootstrap`` replicates), reliability and the task of a
    task-specific group; snapshot count and step range, sources, halves, warnings, notes.
    Numbers a trace cannot give (no snapshot after step 0) are None."""
    sim = None
    specific: dict[str, str] = {}  # task-specific group -> its one task (per-task heads)
    note = None
    if len(trace.steps):
        result = analyse_run(trace, parts=["similarity"], n_bootstrap=n_bootstrap)
        if "similarity" in result.frames:
            sim = result.frames["similarity"].set_index("group")
        warnings = result.warnings
        if "task_specific_groups" in result.frames:
            frame = result.frames["task_specific_groups"]
            specific = dict(zip(frame["group"], frame["task"], strict=True))
            note = next(n for n in result.notes if "task-specific" in n)
    else:
        warnings = []

    def number(group: str, column: str):
        if sim is None or group not in sim.index:
            return None
        value = float(sim.loc[group, column])
        return value if value == value else None  # NaN -> None

    groups = [
        {
            "group": group,
            "numel": trace.group_sizes.get(group, sum(trace.group_sizes.values())),
            "params": len(trace.group_params.get(group, []))
            if group in trace.group_params
            else sum(len(v) for v in trace.group_params.values()),
            "mean_similarity": number(group, "mean_cosine"),
            "ci_low": number(group, "ci_low"),
            "ci_high": number(group, "ci_high"),
            "reliability": number(group, "reliability"),
            "task_specific": specific.get(group),
        }
        for group in ["all", *trace.groups]
    ]
    summary = {
        "path": str(trace.path),
        "tasks": [{"name": t, "iso639_3": trace.iso_codes[t]} for t in trace.tasks],
        "groups": groups,
        "snapshots": len(trace.steps),
        "steps": [int(trace.steps.min()), int(trace.steps.max())] if len(trace.steps) else None,
        "sources": sorted(set(trace.sources)),
        "halves": has_halves(trace),
        "warnings": warnings,
        "notes": [note] if note else [],
    }
    return summary


def trace_summary_text(summary: dict[str, Any]) -> str:
    """The summary of :func:`trace_summary` as the lines ``geomtrace inspect`` prints (the
    warnings are left to the caller: they go to standard error)."""
    lines = [f"trace      {summary['path']}"]
    tasks = ", ".join(
        f"{t['name']}" + (f" ({t['iso639_3']})" if t["iso639_3"] else "") for t in summary["tasks"]
    )
    lines.append(f"tasks      {len(summary['tasks'])}: {tasks}")
    steps = summary["steps"]
    lines.append(
        f"snapshots  {summary['snapshots']}"
        + (f", steps {steps[0]}..{steps[1]} ({', '.join(summary['sources'])})" if steps else "")
    )
    groups = summary["groups"]
    lines.append(f"groups     {len(groups) - 1} (+ all: the whole model)")
    lines.append(
        "           mean similarity = mean over task pairs, snapshots after step 0, 95% CI"
    )
    width = max(len(g["group"]) for g in groups)
    for g in groups:
        if g["task_specific"] is not None:
            continue  # said once below, not one row of dashes per head
        if g["mean_similarity"] is None:
            mean = "n/a (no snapshot after step 0)"
        else:
            lo, hi = g["ci_low"], g["ci_high"]
            ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else ""
            mean = f"{g['mean_similarity']:+.3f}{ci}"
        rel = "" if g["reliability"] is None else f"  reliability {g['reliability']:.2f}"
        lines.append(
            f"  {g['group']:<{width}}  {g['numel']:>10,d} params  mean similarity {mean}{rel}"
        )
    for note in summary["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
