"""Options of the run commands, declared once, and how they become a spec and run options."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from remote_introspect.cli.app import _fail
from remote_introspect.errors import UserError

if TYPE_CHECKING:
    from remote_introspect.execution.runner import RunOptions


def _parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def _parse_concepts(text: str) -> tuple[str, ...]:
    from remote_introspect.experiment.prompts import CONCEPT_WORDS

    text = text.strip()
    if text.isdigit():
        n = int(text)
        if not 1 <= n <= len(CONCEPT_WORDS):
            raise UserError(f"--concepts N must be between 1 and {len(CONCEPT_WORDS)}, got {n}")
        return CONCEPT_WORDS[:n]
    return tuple(w.strip() for w in text.split(",") if w.strip())




ProtocolOpt = Annotated[
    str | None, typer.Option(help="lindsey | merrill-405b | ndif-405b: the published knobs and grid.")
]
_JOB_TIMEOUT_HELP = (
    "Seconds a remote job may stay RUNNING before it counts as lost and is resubmitted "
    "(NDIF kills jobs at 3600 s; time queued does not count)."
)
_QUEUE_TIMEOUT_HELP = (
    "Seconds a remote job may sit queued with no change before the server is asked about "
    "it; resubmitted only if the server no longer knows it or no longer hosts the model, or "
    "once it has sat unchanged for --queue-timeout + --job-timeout (a status frozen by a restart)."
)
_SHARE_HELP = (
    "NDIF: prefill the prompt prefix all rows share once per request (a 2-trace session). "
    "Off by default: unverified on the real service (the cache argument's name is chosen by the "
    "client's transformers). Local runs always share."
)


def _spec_overrides(**flags: object) -> dict[str, object]:
    """CLI flags → ExperimentSpec fields (None = not given, so the protocol/file value stands)."""
    o: dict[str, object] = {}
    if flags["model"] is not None:
        o["model"] = flags["model"]
    if flags["concepts"] is not None:
        o["concepts"] = _parse_concepts(str(flags["concepts"]))
    if flags["strengths"] is not None:
        text = str(flags["strengths"]).strip()
        o["strengths"] = "auto" if text == "auto" else _parse_floats(text, "--strengths")
    if flags["layers"] is not None:
        o["layers"] = _parse_ints(str(flags["layers"]), "--layers")
    if flags["layer_fractions"] is not None:
        o["layer_fractions"] = _parse_floats(str(flags["layer_fractions"]), "--layer-fractions")
    for name in ("samples", "controls", "seed", "span", "strength_mode", "dense_points", "crossover_mode"):
        if flags[name] is not None:
            o[name] = flags[name]
    if flags["dense_grid"] is not None:
        o["dense_grid"] = flags["dense_grid"]
    gen = {
        k: flags[f]
        for k, f in (("max_new_tokens", "max_new_tokens"), ("temperature", "temperature"), ("top_p", "top_p"))
        if flags[f] is not None
    }
    if gen:
        o["generation"] = gen
    if flags["prompt_set"] is not None:
        o["prompt_sets"] = tuple(p.strip() for p in str(flags["prompt_set"]).split(",") if p.strip())
    recipe = {}
    if flags["vectors"] is not None:
        recipe["kind"] = flags["vectors"]
        recipe["normalize"] = flags["vectors"] == "contrast-pairs"
    if flags["pairs"] is not None:
        recipe["pairs"] = flags["pairs"]
    if recipe:
        o["recipe"] = recipe
    if flags["conditions"] is not None:
        o["conditions"] = tuple(c.strip() for c in str(flags["conditions"]).split(",") if c.strip())
    if flags["scale_factors"] is not None:
        o["scale_factors"] = _parse_floats(str(flags["scale_factors"]), "--scale-factors")
    return o


def _run_options(
    *,
    cache: Path,
    backend: str | None,
    batch_size: int | None,
    dtype: str | None,
    judge: str,
    ndif_host: str | None,
    tokenizer: Path | None,
    max_attempts: int,
    job_timeout: float,
    queue_timeout: float,
    allow_version_mismatch: bool,
    share_prefix: bool,
) -> RunOptions:
    from remote_introspect.execution.runner import RunOptions
    from remote_introspect.retry_policy import RetrySettings

    if max_attempts < 1:
        _fail("--max-attempts must be at least 1")
    if not job_timeout > 0:
        _fail("--job-timeout must be positive")
    if not queue_timeout > 0:
        _fail("--queue-timeout must be positive")
    return RunOptions(
        cache_root=cache, backend=backend, batch_rows=batch_size, dtype=dtype, judge=judge, ndif_host=ndif_host,
        tokenizer_dir=tokenizer, retry=RetrySettings(max_attempts=max_attempts),
        job_timeout_s=float(job_timeout), queue_timeout_s=float(queue_timeout),
        allow_version_mismatch=allow_version_mismatch, share_prefix=share_prefix,
    )  # fmt: skip


# Every option `replicate-lindsey` and `run` share, declared once: name → (type, help[, flag
# declarations]). Experiment knobs first (all default to None = not given: the protocol's or the
# file's value stands), then how to run it, with its default.
_SPEC_TABLE: dict[str, tuple[Any, ...]] = {
    "model": (str | None, "Preset (see `models`), HF repo id, or local model directory."),
    "backend": (str | None, "local | ndif (default: the preset's)."),
    "concepts": (str | None, "N (the first N of Lindsey's list) or words: Dust,Oceans."),
    "strengths": (str | None, "Comma-separated strengths (1,2,4,8) or auto."),
    "layers": (str | None, "Absolute decoder layers, e.g. 12,14."),
    "layer_fractions": (str | None, "Fractions of depth, e.g. 0.55,0.67."),
    "samples": (int | None, "Trials per concept × strength × layer [× prompt]."),
    "controls": (int | None, "No-injection trials per prompt (shared by all cells)."),
    "seed": (int | None, "Experiment seed (part of every trial key)."),
    "max_new_tokens": (int | None, "Tokens generated per trial."),
    "temperature": (float | None, "Sampling temperature (0 = greedy)."),
    "top_p": (float | None, "Nucleus sampling top_p."),
    "prompt_set": (str | None, "Prompt sets, comma-separated: lindsey, merrill, thinking."),
    "span": (str | None, "from-trial | all | generated."),
    "strength_mode": (str | None, "absolute | norm-matched | mlp-norm-matched | relative."),
    "vectors": (str | None, "Concept vectors: mean-baseline | contrast-pairs."),
    "pairs": (str | None, "Contrast pairs JSON (default: Merrill's, shipped)."),
    "conditions": (str | None, "Extra conditions: control,random,scale,positive or all."),
    "scale_factors": (str | None, "Activation-scaling factors for the scale condition."),
    "dense_grid": (bool | None, "Coarse grid → crossover → dense grid.", "--dense-grid/--no-dense-grid"),
    "dense_points": (int | None, "Points in the dense grid (8-12 recommended)."),
    "crossover_mode": (str | None, "Crossover definition: rise-through | threshold."),
}
_RUN_TABLE: dict[str, tuple[Any, ...]] = {  # name → (type, default, help[, flag declarations])
    "cache": (Path, Path("cache"), "Cache directory (SQLite + safetensors)."),
    "batch_size": (int | None, None, "Rows per generate call / request (default: preset)."),
    "dtype": (str | None, None, "fp32 | bf16 | fp16 (default: bf16 on GPU, fp32 on CPU)."),
    "judge": (str, "heuristic", "Grader: heuristic (offline, default)."),
    "ndif_host": (str | None, None, "NDIF-compatible server URL (default: $NDIF_HOST or https://api.ndif.us)."),
    "tokenizer": (Path | None, None, "Local tokenizer directory for a remote model (else the HF cache)."),
    "max_attempts": (int, 10, "Attempts per remote request (transient errors)."),
    "job_timeout": (float, 4200.0, _JOB_TIMEOUT_HELP),
    "queue_timeout": (float, 7200.0, _QUEUE_TIMEOUT_HELP),
    "allow_version_mismatch": (bool, False, "Run even if the server's nnsight version differs from ours."),
    "share_prefix": (bool, False, _SHARE_HELP, "--share-prefix/--no-share-prefix"),
}


def _option(kind: Any, help: str, *decls: str) -> Any:
    """The `Annotated[kind, typer.Option(...)]` Typer reads from a command's signature."""
    return Annotated[kind, typer.Option(*decls, help=help)]


SPEC_OPTIONS: dict[str, Any] = {name: _option(kind, *rest) for name, (kind, *rest) in _SPEC_TABLE.items()}
RUN_OPTIONS: dict[str, tuple[Any, Any]] = {  # (type, default)
    name: (_option(kind, *rest), default) for name, (kind, default, *rest) in _RUN_TABLE.items()
}
# Named annotations, for commands that take only some of the shared options (compare, scale…).
ModelOpt, BackendOpt, ConceptsOpt = SPEC_OPTIONS["model"], SPEC_OPTIONS["backend"], SPEC_OPTIONS["concepts"]
StrengthsOpt, LayersOpt, FractionsOpt = SPEC_OPTIONS["strengths"], SPEC_OPTIONS["layers"], SPEC_OPTIONS["layer_fractions"]
SamplesOpt, ControlsOpt, SeedOpt = SPEC_OPTIONS["samples"], SPEC_OPTIONS["controls"], SPEC_OPTIONS["seed"]
TokensOpt, TempOpt, TopPOpt = SPEC_OPTIONS["max_new_tokens"], SPEC_OPTIONS["temperature"], SPEC_OPTIONS["top_p"]
PromptOpt, SpanOpt, ModeOpt = SPEC_OPTIONS["prompt_set"], SPEC_OPTIONS["span"], SPEC_OPTIONS["strength_mode"]
RecipeOpt, PairsOpt, CondOpt = SPEC_OPTIONS["vectors"], SPEC_OPTIONS["pairs"], SPEC_OPTIONS["conditions"]
ScaleOpt, DenseOpt = SPEC_OPTIONS["scale_factors"], SPEC_OPTIONS["dense_grid"]
DensePointsOpt, CrossModeOpt = SPEC_OPTIONS["dense_points"], SPEC_OPTIONS["crossover_mode"]
CacheOpt, BatchOpt, DtypeOpt = RUN_OPTIONS["cache"][0], RUN_OPTIONS["batch_size"][0], RUN_OPTIONS["dtype"][0]
JudgeOpt, HostOpt, TokOpt = RUN_OPTIONS["judge"][0], RUN_OPTIONS["ndif_host"][0], RUN_OPTIONS["tokenizer"][0]
AttemptsOpt, JobTimeoutOpt = RUN_OPTIONS["max_attempts"][0], RUN_OPTIONS["job_timeout"][0]
QueueTimeoutOpt, MismatchOpt = RUN_OPTIONS["queue_timeout"][0], RUN_OPTIONS["allow_version_mismatch"][0]
ShareOpt = RUN_OPTIONS["share_prefix"][0]
_SPEC_FLAGS = [n for n in SPEC_OPTIONS if n != "backend"]
_RUN_FLAGS = ["backend", *RUN_OPTIONS]


def experiment_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a run command every shared option. `fn(own args..., spec_flags=..., run_flags=...)`
    receives its own parameters as declared (its options listed after --model), plus the shared ones split into spec overrides
    (`_spec_overrides`) and run options (`_run_options`). Typer reads the combined signature."""
    own = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("spec_flags", "run_flags")]
    hints = typing.get_type_hints(fn, include_extras=True)
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, (kind, default) in (
            *((n, (t, None)) for n, t in SPEC_OPTIONS.items()),
            *RUN_OPTIONS.items(),
        )
    ]
    own = [p.replace(annotation=hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
    # Arguments first, then --model, then the command's own options, then the shared ones.
    args = [p for p in own if p.default is inspect.Parameter.empty]
    params = args + shared[:1] + [p for p in own if p not in args] + shared[1:]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        spec_flags = {k: kwargs.pop(k) for k in _SPEC_FLAGS}
        run_flags = {k: kwargs.pop(k) for k in _RUN_FLAGS}
        fn(**kwargs, spec_flags=spec_flags, run_flags=run_flags)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


