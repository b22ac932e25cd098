"""The self-prediction table: read a run's trials from the cache (through the same checked frame
`audit` uses), parse every answer exactly, score each target model (stats/self_prediction.py)
and format the result for stdout and the report.

Only trials that are done and intact count. A failed, unrun or corrupt trial is never a wrong
prediction: its units are left out of the scores that need it, and the counts say how many.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

from remote_introspect.experiment import self_prediction as sp
from remote_introspect.stats.self_prediction import TargetScores, Unit, score_target
from remote_introspect.store.results_frame import load_frame

CAVEAT = (
    "Untrained models. Binder et al.'s introspection claim is about models fine-tuned to predict "
    "themselves; this table is the untrained baseline such a result is measured against. Self > "
    "cross here says a model's own answers are easier for it to predict than another model's "
    "answers are for that model, which can come from shared dispositions (a model answering the "
    "hypothetical the way it answers the task), not privileged access; it cannot confirm or refute "
    "the fine-tuned claim."
)


@dataclass
class Answers:
    """Parsed answers per model label: truths[label][unit] and predictions[label][unit]."""

    models: list[str]
    truths: dict[str, dict[Unit, str | None]]
    predictions: dict[str, dict[Unit, str | None]]
    counts: dict[str, dict[str, int]]  # label -> planned / done / failed / not done / corrupt


def load_answers(conn: sqlite3.Connection, runs: Iterable[tuple[str, list[str]]]) -> Answers:
    """`runs`: (model label, its trial keys). Reads and verifies those trials (read-only)."""
    runs = list(runs)
    all_keys = [k for _, ks in runs for k in ks]
    df = load_frame(conn, "heuristic", all_keys).df
    rows = {r["key"]: r for r in df.select("key", "status", "integrity", "trial_json", "response", "diagnostics_json").iter_rows(named=True)}
    out = Answers([label for label, _ in runs], {}, {}, {})
    for label, ks in runs:
        truths: dict[Unit, str | None] = {}
        preds: dict[Unit, str | None] = {}
        c = {"planned": len(ks), "done": 0, "failed": 0, "not_done": 0, "corrupt": 0}
        for k in ks:
            r = rows.get(k)
            if r is None:
                c["not_done"] += 1
                continue
            if r["integrity"] != "ok":
                c["corrupt"] += 1
                continue
            if r["status"] != "done":
                c["failed" if r["status"] == "failed" else "not_done"] += 1
                continue
            c["done"] += 1
            t = json.loads(r["trial_json"])
            item = sp.item_by_id(t["task"], t["item_id"])
            if t["level"] == "object":
                stopped = bool(json.loads(r["diagnostics_json"] or "{}").get("stopped", False))
                for prop in sp.properties_for(t["task"]):
                    truths[(t["task"], prop, t["item_id"])] = sp.property_truth(prop, r["response"], item, stopped)
            else:
                preds[(t["task"], t["property"], t["item_id"])] = sp.property_parse(t["property"], r["response"], item)
        out.truths[label] = truths
        out.predictions[label] = preds
        out.counts[label] = c
    # Only properties that were asked (--properties) are scored: drop the other truths.
    asked = {(u[0], u[1]) for preds in out.predictions.values() for u in preds}
    for label, truths in out.truths.items():
        out.truths[label] = {u: v for u, v in truths.items() if (u[0], u[1]) in asked}
    return out


def score_all(answers: Answers) -> list[TargetScores]:
    return [score_target(m, answers.truths[m], answers.predictions) for m in answers.models]


def _acc(r: Any) -> str:
    return r.format() if r is not None else "—"


def format_table(answers: Answers, scores: list[TargetScores]) -> list[str]:
    lines = ["Self-prediction (greedy answers; exact 95% CIs; paired: exact McNemar)", ""]
    for label in answers.models:
        c = answers.counts[label]
        lines.append(
            f"{label}: {c['planned']} trials, {c['done']} done, {c['failed']} failed, {c['not_done']} not run, "
            f"{c['corrupt']} corrupt (only done, intact trials are scored)"
        )
    for s in scores:
        lines += ["", f"target {s.target}: {s.units} units with a value ({s.undefined} answers without one left out)"]
        for p, acc in s.accuracy.items():
            role = "self " if p == s.target else "cross"
            lines.append(f"  {role} {p} predicts {s.target}: {_acc(acc)}; unparsed {s.unparsed[p]}")
        lines.append(f"  mode baseline: {_acc(s.mode)}")
        if s.self_minus_best_cross is not None:
            lines.append(f"  self − best cross ({s.best_cross}): {s.self_minus_best_cross.format()}")
        else:
            lines.append("  self − best cross: — (no other model)")
        lines.append(f"  self − mode: {s.self_minus_mode.format()}")
        lines.append("  per task/property (accuracy of each predictor; mode):")
        for (task, prop), row in s.per_property.items():
            cells = "; ".join(f"{p} {r.format()}" for p, r in row.items())
            lines.append(f"    {task}/{prop}: {cells}")
    lines += ["", CAVEAT]
    return lines


def runs_in_cache(conn: sqlite3.Connection) -> list[tuple[dict[str, Any], list[tuple[str, list[str]]]]]:
    """Self-prediction runs recorded in the cache: (run spec, [(model label, trial keys)]), one per
    distinct run spec; per model the latest experiment (a model whose weights changed keeps only
    its newest)."""
    from remote_introspect.store.results_frame import load_experiments

    groups: dict[str, dict[str, Any]] = {}
    for e in load_experiments(conn):
        spec = e.spec or {}
        if spec.get("kind") != sp.TRIAL_KIND:
            continue
        run = {k: v for k, v in spec.items() if k != "model"}
        key = json.dumps(run, sort_keys=True)
        g = groups.setdefault(key, {"spec": run, "models": {}})
        g["models"][spec.get("model")] = e.keys  # experiments come oldest first
    out = []
    for g in groups.values():
        order = [m for m in g["spec"].get("models", []) if m in g["models"]]
        out.append((g["spec"], [(m, g["models"][m]) for m in order]))
    return out


def frame_kind_filter() -> pl.Expr:
    return pl.col("trial_json").str.contains('"kind":"self-predict"')


def report_sections(root: Any) -> list[tuple[str, list[str]]]:
    """(title, table lines) for every self-prediction run in the cache at `root` (read-only)."""
    from remote_introspect.store.results_frame import open_readonly

    conn = open_readonly(root)
    try:
        out = []
        for spec, runs in runs_in_cache(conn):
            answers = load_answers(conn, runs)
            title = (
                f"Self-prediction: {', '.join(m for m, _ in runs)} — tasks {', '.join(spec.get('tasks') or [])}, "
                f"n={spec.get('n')}, seed={spec.get('seed')}"
            )
            out.append((title, format_table(answers, score_all(answers))))
        return out
    finally:
        conn.close()
