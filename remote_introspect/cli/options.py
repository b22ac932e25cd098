"""Options of the run commands, declared once, and how they become a spec and run options."""

from __future__ import annotations

import functools
import inspect
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


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


# How a grid flag's text becomes a spec field (every other flag is taken as given).
_PARSE: dict[str, Callable[[str], object]] = {
    "concepts": _parse_concepts,
    "strengths": lambda t: _parse_floats(t, "--strengths"),
    "layers": lambda t: _parse_ints(t, "--layers"),
    "layer_fractions": lambda t: _parse_floats(t, "--layer-fractions"),
    "conditions": _names,
    "scale_factors": lambda t: _parse_floats(t, "--scale-factors"),
}


def _grid_fields(**flags: object) -> dict[str, object]:
    """The flags given (None = not given, so the protocol's or file's value stands) → spec fields,
    for every command that builds a spec from --model, --concepts, --strengths, --layers,
    --layer-fractions, --vectors, --conditions, --seed, ...: lists parsed, --vectors as a recipe."""
    o: dict[str, object] = {}
    for name, value in flags.items():
        if value is None:
            continue
        if name == "vectors":
            o["recipe"] = {"kind": value, "normalize": value == "contrast-pairs"}
        else:
            o[name] = _PARSE[name](str(value)) if name in _PARSE else value
    return o


def _spec_overrides(**flags: object) -> dict[str, object]:
    """CLI flags → ExperimentSpec fields (None = not given, so the protocol/file value stands)."""
    rest = ("max_new_tokens", "temperature", "top_p", "prompt_set", "pairs")
    given = {k: v for k, v in flags.items() if k not in rest}
    auto = str(given["strengths"]).strip() == "auto"  # the runner picks them (experiment specs only)
    o = _grid_fields(**{**given, "strengths": None if auto else given["strengths"]})
    if auto:
        o["strengths"] = "auto"
    gen = {k: flags[k] for k in ("max_new_tokens", "temperature", "top_p") if flags[k] is not None}
    if gen:
        o["generation"] = gen
    if flags["prompt_set"] is not None:
        o["prompt_sets"] = _names(str(flags["prompt_set"]))
    if flags["pairs"] is not None:
        recipe = o.setdefault("recipe", {})
        assert isinstance(recipe, dict)
        recipe["pairs"] = flags["pairs"]
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


_PACKED = ("spec_flags", "run_flags", "opts", "fields")  # what `_with_shared` passes in place of the shared options
_RUN_ONLY_FLAGS = ["backend", *(n for n in RUN_OPTIONS if n not in ("judge", "share_prefix"))]


def _resolve(annotation: Any, fn: Callable[..., None]) -> Any:
    """A string annotation (`from __future__ import annotations`) as the object it names in `fn`'s module."""
    if not isinstance(annotation, str):
        return annotation
    return eval(annotation, fn.__globals__)  # noqa: S307 -- our own source text, as typing.get_type_hints does


def _with_shared(
    fn: Callable[..., None],
    shared: list[inspect.Parameter],
    after_args: int,
    pack: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[..., None]:
    """`fn` with the `shared` options added to the signature Typer reads: `fn`'s arguments, the
    first `after_args` shared options, `fn`'s own options, the rest. `pack` turns the shared
    options' values into the keyword arguments `fn` receives in their place."""
    names = [p.name for p in shared]
    # Resolve only the command's own annotations: the packed ones (`opts: RunOptions`) may name a
    # type imported under TYPE_CHECKING, and Typer never sees them.
    own = [
        p.replace(annotation=_resolve(p.annotation, fn), kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(fn).parameters.values()
        if p.name not in _PACKED
    ]
    args = [p for p in own if p.default is inspect.Parameter.empty]
    params = args + shared[:after_args] + [p for p in own if p not in args] + shared[after_args:]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        given = pack({k: kwargs.pop(k) for k in names})
        fn(**kwargs, **given)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _shared(table: dict[str, tuple[Any, Any]], names: list[str]) -> list[inspect.Parameter]:
    return [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=table[n][1], annotation=table[n][0])
        for n in names
    ]


_ALL = {**{n: (t, None) for n, t in SPEC_OPTIONS.items()}, **RUN_OPTIONS}


def experiment_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a run command every shared option. `fn(own args..., spec_flags=..., run_flags=...)`
    receives its own parameters as declared (its options listed after --model), plus the shared ones split into spec overrides
    (`_spec_overrides`) and run options (`_run_options`). Typer reads the combined signature."""

    def pack(flags: dict[str, Any]) -> dict[str, Any]:
        return {
            "spec_flags": {k: flags[k] for k in _SPEC_FLAGS},
            "run_flags": {k: flags[k] for k in _RUN_FLAGS},
        }

    return _with_shared(fn, _shared(_ALL, list(_ALL)), 1, pack)


def run_command(*spec_options: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command that builds its own spec the shared how-to-run options (--backend, --cache,
    --batch-size, --dtype, --ndif-host, --tokenizer, the retry and timeout knobs; not --judge nor
    --share-prefix: its trials are read out, not generated and graded), received as `opts`
    (RunOptions), and the shared spec options named in `spec_options` (e.g. "model", "layers"),
    listed first and received as `fields`: those given, parsed into spec fields (`_grid_fields`).
    A bad value fails with one line before the command runs."""

    def pack(flags: dict[str, Any]) -> dict[str, Any]:
        run = {k: flags[k] for k in _RUN_ONLY_FLAGS}
        packed: dict[str, Any] = {"opts": _run_options(**run, judge="heuristic", share_prefix=False)}
        if spec_options:
            try:
                packed["fields"] = _grid_fields(**{k: flags[k] for k in spec_options})
            except UserError as exc:
                _fail(str(exc), exc.exit_code)
        return packed

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        return _with_shared(fn, _shared(_ALL, [*spec_options, *_RUN_ONLY_FLAGS]), len(spec_options), pack)

    return wrap
