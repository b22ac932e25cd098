"""`scale`: the same experiment on several models, one scaling row each.

Each model runs through the ordinary runner (`runner.run_with_grid`) on the shared cache, so a
model already run with the same knobs (by `replicate-lindsey`, `run` or an earlier `scale`) is
reused trial for trial, and its row is read back through the one analysis path
(`results_frame.load_frame` → `stats.scaling.scaling_row`). Local models run locally, remote ones
on NDIF (the preset's backend, `--backend`, or a per-entry `MODEL@local` / `MODEL@ndif`).

Bad input (an unknown model name, a layer out of range for some model, a bad flag) is rejected for
every model before any runs. A model that cannot run here — weights or tokenizer not in the cache,
not hosted on NDIF, no NDIF_API_KEY, a version refusal — gets a row saying why; the others run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from remote_introspect.errors import UserError
from remote_introspect.execution import runner
from remote_introspect.execution.runner import RunOptions, RunReport
from remote_introspect.experiment.spec import ExperimentSpec
from remote_introspect.models.loading import ModelRef, resolve_model
from remote_introspect.models.parameters import parameter_count
from remote_introspect.stats.scaling import ScalingRow, scaling_row
from remote_introspect.store.results_frame import load_frame, open_readonly

log = logging.getLogger(__name__)

BACKENDS = ("local", "ndif")
MAX_MODELS = 50


@dataclass(frozen=True)
class ScaleEntry:
    """One entry of `--models`: anything `--model` accepts, optionally `@local` / `@ndif`."""

    model: str
    backend: str | None = None

    @property
    def label(self) -> str:
        return self.model + (f"@{self.backend}" if self.backend else "")


def parse_models(text: str) -> list[ScaleEntry]:
    """`gemma-270m,1b,/models/x@ndif` → entries (duplicates dropped, order kept)."""
    entries: list[ScaleEntry] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        model, sep, backend = item.rpartition("@")
        entry = ScaleEntry(model, backend) if sep and backend in BACKENDS and model else ScaleEntry(item)
        if entry not in entries:
            entries.append(entry)
    if not entries:
        raise UserError("--models is empty; give comma-separated models, e.g. tiny,gemma-270m")
    if len(entries) > MAX_MODELS:
        raise UserError(f"{len(entries)} models is more than the limit of {MAX_MODELS}")
    return entries


@dataclass
class ModelOutcome:
    """One model's row: its statistics, or why it has none."""

    entry: ScaleEntry
    spec: ExperimentSpec
    backend: str
    params: int | None
    repo_id: str
    row: ScalingRow | None = None
    unavailable: str | None = None  # why the model could not run here
    report: RunReport | None = None

    @property
    def status(self) -> str:
        if self.unavailable is not None:
            return "unavailable"
        if self.report is not None and self.report.excluded:
            return "integrity problems"
        if self.report is not None and not self.report.complete:
            return "incomplete"
        return "done"


@dataclass
class _Planned:
    entry: ScaleEntry
    spec: ExperimentSpec
    opts: RunOptions
    ref: ModelRef | None
    unavailable: str | None


def _looks_like_repo_id(name: str) -> bool:
    return "/" in name and not name.startswith((".", "/", "~")) and not Path(name).exists()


def plan(
    entries: list[ScaleEntry], build: Callable[[str], ExperimentSpec], opts: RunOptions
) -> list[_Planned]:
    """Validate every model's spec before anything runs. Raises UserError on bad input; a repo
    id that is not in the local cache is planned as unavailable (no weights here)."""
    out: list[_Planned] = []
    for entry in entries:
        spec = build(entry.model)
        mopts = dataclasses.replace(opts, backend=entry.backend or opts.backend)
        try:
            ref = resolve_model(entry.model)
        except UserError as err:
            if not _looks_like_repo_id(entry.model):
                raise
            out.append(_Planned(entry, spec, mopts, None, str(err)))
            continue
        try:
            runner.validate(spec, mopts)
        except UserError as err:
            raise UserError(f"{entry.label}: {err}") from None
        out.append(_Planned(entry, spec, mopts, ref, None))
    return out


def read_row(report: RunReport, prompt_set: str) -> ScalingRow:
    """The scaling row of a finished run, from the same verified frame `audit` reads."""
    conn = open_readonly(report.cache_root)
    try:
        df = load_frame(conn, report.judge, (t.key for t in report.trials)).df
    finally:
        conn.close()
    return scaling_row(df.filter(pl.col("usable") & (pl.col("prompt_set") == prompt_set)))


def run_scale(
    entries: list[ScaleEntry],
    build: Callable[[str], ExperimentSpec],
    opts: RunOptions,
    progress: runner.Progress | None = None,
    notice: Callable[[str], None] | None = None,
    request_status: Callable[[str], None] | None = None,
) -> list[ModelOutcome]:
    """Run (or reuse) the experiment on each model in turn; one outcome per entry, in order."""
    notice = notice or (lambda line: log.info("%s", line))
    planned = plan(entries, build, opts)
    outcomes: list[ModelOutcome] = []
    for p in planned:
        backend = p.opts.backend or (p.ref.default_backend if p.ref else "local")
        params = parameter_count(p.ref.repo_id, p.ref.config) if p.ref else None
        out = ModelOutcome(p.entry, p.spec, backend, params, p.ref.repo_id if p.ref else p.entry.model)
        outcomes.append(out)
        if p.unavailable is not None:
            out.unavailable = p.unavailable
            notice(f"{p.entry.label}: unavailable: {p.unavailable}")
            continue
        notice(f"{p.entry.label}: running on {backend}")
        try:
            prefixed = runner.Hooks.of(progress, lambda line, m=p.entry.label: notice(f"{m}: {line}"), request_status)
            out.report = runner.run_with_grid(p.spec, p.opts, prefixed)
        except UserError as err:  # weights/tokenizer missing, not hosted, no key, refused: a row
            if err.exit_code == 4:  # a corrupt cache is the cache's problem, not the model's
                raise
            out.unavailable = " ".join(str(err).split())
            notice(f"{p.entry.label}: unavailable: {out.unavailable}")
            continue
        out.row = read_row(out.report, p.spec.prompt_sets[0])
    return outcomes
