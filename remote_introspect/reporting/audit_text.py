"""The audit as text (`audit` without `--json`, and the report's result lines): the same dict
`audit.run_audit` returns, rendered line by line; nothing here computes a number."""

from __future__ import annotations

from typing import Any

from remote_introspect.reporting.judge_agreement import format_agreement_rows
from remote_introspect.reporting.localization import localization_lines


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def fmt_rate(r: dict[str, Any] | None) -> str:
    """ "k/n rate [lo, hi]" (exact 95%), "0/0 —" when there is nothing to count."""
    if r is None or not r["n"]:
        return "0/0 —"
    return f"{r['k']}/{r['n']} {_pct(r['rate'])} [{_pct(r['lo'])}, {_pct(r['hi'])}]"


def fmt_net(d: dict[str, Any] | None) -> str:
    if d is None:
        return "— (needs injected and control trials)"
    return f"{100 * d['net']:+.1f}% [{100 * d['lo']:+.1f}%, {100 * d['hi']:+.1f}%]"


def format_results(res: dict[str, Any], indent: str = "  ") -> list[str]:
    inj, ctl = res["injected"], res["controls"]
    lines = [
        f"{indent}injected: strict hits {fmt_rate(inj['strict'])}; affirmative∧identifies {fmt_rate(inj['affirmative_identifies'])}",
        f"{indent}          identifies {fmt_rate(inj['identifies'])}; coherent {fmt_rate(inj['coherent'])}; refusals {fmt_rate(inj['refusal'])}",
        f"{indent}controls: false positives (affirmative) {fmt_rate(ctl['false_positive_affirmative'])}; "
        f"(affirmative∧names a concept) {fmt_rate(ctl['false_positive_affirmative_identifies'])}; refusals {fmt_rate(ctl['refusal'])}",
        f"{indent}net detection (strict − affirmative FP): {fmt_net(res['net_strict'])}",
        f"{indent}net detection (affirmative∧identifies, both arms): {fmt_net(res['net_affirmative_identifies'])}",
    ]
    rx = res.get("refusal_excluded")
    if rx:
        lines.append(
            f"{indent}refusals excluded: strict {fmt_rate(rx['strict'])}; FP {fmt_rate(rx['false_positive_affirmative'])}; "
            f"net {fmt_net(rx['net_strict'])}"
        )
    for cond, r in (res.get("other_conditions") or {}).items():
        lines.append(
            f"{indent}{cond} trials: strict {fmt_rate(r['strict'])}; affirmative {fmt_rate(r['affirmative'])}; "
            f"identifies {fmt_rate(r['identifies'])}; coherent {fmt_rate(r['coherent'])}"
        )
    null = res.get("null")
    if null:
        need = ", ".join(f"{100 * t['true_rate']:g}% → {t['n']}" for t in null["trials_needed"])
        lines.append(f"{indent}null: {null['text']}")
        lines.append(
            f"{indent}trials needed to detect a true rate (power 80%, one-sided α 5%, no false positives): {need}"
        )
    return lines


def format_audit(a: dict[str, Any]) -> str:
    out: list[str] = []
    j = a["judge"]
    out.append(f"Cache {a['cache']} — audit against judge {j['grader']} {j['version']}")
    db = a["database"]
    if not db["ok"] and a["totals"] is None:
        out.append(f"DATABASE CORRUPT: {db['check']}")
        for p in a["integrity"]["problems"]:
            out.append(f"  - {p['kind']}: {p['object']} {p['id']}: {p['detail']}")
        out.append("Nothing in this cache can be trusted until the database is restored from a copy.")
        out.append(f"Verdict: CORRUPT (exit {a['exit_code']})")
        return "\n".join(out)
    t = a["totals"]
    out.append(
        f"{t['experiments']} experiment(s), {t['trials']} trials: {t['done']} done, {t['failed']} failed, "
        f"{t['in_flight']} in flight, {t['never_run']} never run; {t['ungraded']} done but ungraded; "
        f"{t['corrupt']} corrupt; {t['usable']} usable"
    )
    for e in a["experiments"]:
        c = e["trials"]
        out.append("")
        out.append(
            f"Experiment {e['name']} [{e['id']}] — model {e['model']} ({', '.join(e['model_repo_ids']) or '?'}), "
            f"prompt(s) {', '.join(e['prompt_sets']) or '—'}, created {e['created_at']}"
        )
        layers = ",".join(str(x) for x in e["layers"]) or "—"
        strengths = ",".join(f"{x:g}" for x in e["strengths"]) or "—"
        if e.get("self_predict_answers") is None:  # a self-prediction run has no concept grid
            out.append(f"  grid: {len(e['concepts'])} concept(s), layers {layers}, strengths {strengths}")
        missing = f", {c['missing_rows']} registered but missing" if c["missing_rows"] else ""
        out.append(
            f"  trials: {c['planned']} planned, {c['done']} done, {c['failed']} failed, {c['in_flight']} in flight, "
            f"{c['never_run']} never run{missing}; {c['ungraded']} done but ungraded; {c['corrupt']} corrupt"
            f" — {'complete' if e['complete'] else 'INCOMPLETE'}"
        )
        if e["failures_by_class"]:
            out.append(
                "  failures by class: " + ", ".join(f"{k} {v}" for k, v in e["failures_by_class"].items())
            )
        out.append(
            f"  results over {c['usable']} usable trials (exact 95% CIs; failed/ungraded/corrupt trials excluded):"
        )
        for lines in localization_lines(e.get("localization") or []):
            out.extend(f"    {line}" for line in lines)
        if e.get("self_predict_answers") is not None:
            out.append(
                f"    {e['self_predict_answers']} self-prediction answers, scored by exact parsing "
                "(`self-predict` prints the table; `report` has its section)"
            )
        elif not e["results"] and not e.get("localization"):
            out.append("    (no usable trials)")
        for res in e["results"]:
            out.append(f"    prompt {res['prompt_set']}:")
            out.extend(format_results(res, "      "))
    out.append("")
    if a["failures_by_class"]:
        out.append("Failures by class (failed trials are retried by re-running; never counted as negatives):")
        for cls, f in a["failures_by_class"].items():
            out.append(f"  {cls}: {f['count']} trial(s), e.g. {f['example']}")
    else:
        out.append("Failures: none")
    integ = a["integrity"]
    v = integ["vectors"] or {}
    out.append(
        f"Integrity: database check {db['check']}; {integ['trials_checked']} trial keys recomputed, "
        f"{integ['results_rehashed']} results re-hashed, {integ['grades_checked']} grades checked, "
        f"{v.get('rows', 0)} vectors in {v.get('files', 0)} file(s) re-hashed"
    )
    if integ["problems"]:
        out.append(
            f"  {len(integ['problems'])} PROBLEM(S); damaged trial rows are excluded from every statistic:"
        )
        for p in integ["problems"]:
            out.append(f"  - {p['kind']}: {p['object']} {p['id']}: {p['detail']}")
        if v.get("done_trials_using_bad_vectors"):
            out.append(
                f"  {v['done_trials_using_bad_vectors']} done trial(s) were generated with a vector that no longer "
                "verifies; their stored results are intact, but that vector must be re-extracted before new trials."
            )
    if v.get("unindexed_files") or v.get("temp_files"):
        out.append(
            f"  note: {len(v.get('unindexed_files', []))} unindexed vector file(s), "
            f"{len(v.get('temp_files', []))} temp file(s) from interrupted writes (harmless)"
        )
    if a["orphan_jobs"]:
        out.append(f"Orphan remote jobs (submitted, never collected): {len(a['orphan_jobs'])}")
        for b in a["orphan_jobs"]:
            out.append(
                f"  - job {b['job_id']} on {b['backend']}: batch {b['batch_id'][:16]}…, {b['trials']} trials, "
                f"submitted {b['submitted_at']} (re-run the experiment to reattach)"
            )
    else:
        out.append("Orphan remote jobs: none")
    if a["interrupted_batches"]:
        out.append(
            f"Interrupted local batches (killed mid-run; re-run to finish): {len(a['interrupted_batches'])}, "
            f"{sum(b['trials'] for b in a['interrupted_batches'])} trials"
        )
    if a["unregistered_trials"]:
        out.append(f"Trials in no experiment: {a['unregistered_trials']}")
    if a["judges"]:
        out.append(
            "Judges: "
            + "; ".join(
                f"{x['grader']} {x['version']} ({x['graded']} trials{', chosen' if x['chosen'] else ''})"
                for x in a["judges"]
            )
        )
    for pair in a["agreement"]:
        out.append(
            f"Agreement {pair['a']['grader']} {pair['a']['version']} vs {pair['b']['grader']} {pair['b']['version']} "
            f"on {pair['n']} trials:"
        )
        out.extend("  " + line for line in format_agreement_rows(pair))
    verdict = a["status"].upper()
    out.append(f"Verdict: {verdict} (exit {a['exit_code']})")
    return "\n".join(out)
