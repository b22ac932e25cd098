"""NDIF round trips per 1,000 trials for a realistic sweep, counted on the loopback server.

The real nnsight client submits to a loopback NDIF-protocol server running a tiny model; the
batch size is the one a remote preset uses (default: the 405b preset's), so the request count is
what a 405B sweep of the same shape would send. Prints a table; no assertions.

    python benchmarks/ndif_round_trips.py [--preset 405b] [--concepts 10] [--strengths 5,10,12,15,18]
        [--fault-rate 0.3 --poll-fault-rate 0.3]

Bytes per request are the tiny model's: uploads carry one float32 vector row per batch row
(hidden 64 here; 16,384 for 405B, so ×256 per row), downloads the token ids and diagnostics.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="405b", help="remote preset whose batch size to use")
    ap.add_argument("--concepts", type=int, default=10)
    ap.add_argument("--strengths", default="5,10,12,15,18")
    ap.add_argument("--layers", default="1,2,3")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--controls", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--fault-rate", type=float, default=0.0, help="share of submissions that fail")
    ap.add_argument("--poll-fault-rate", type=float, default=0.0, help="share of polls answered 502")
    args = ap.parse_args()

    from remote_introspect.execution import runner
    from remote_introspect.execution.runner import RunOptions
    from remote_introspect.experiment.prompts import CONCEPT_WORDS
    from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams
    from remote_introspect.models.presets import PRESETS
    from remote_introspect.models.tiny import materialize_tiny_model
    from remote_introspect.retry_policy import RetrySettings
    from remote_introspect.testing.ndif_loopback import DEFAULT_API_KEY, LoopbackNDIF

    rows = PRESETS[args.preset].batch_rows or 64
    os.environ["NDIF_API_KEY"] = DEFAULT_API_KEY
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = materialize_tiny_model(Path(tmp) / "models", "llama")
        spec = ExperimentSpec(
            model=str(model_dir),
            concepts=CONCEPT_WORDS[: args.concepts],
            strengths=tuple(float(s) for s in args.strengths.split(",")),
            layers=tuple(int(x) for x in args.layers.split(",")),
            samples=args.samples,
            controls=args.controls,
            generation=GenerationParams(max_new_tokens=args.max_new_tokens),
        )
        with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as srv:
            srv.faults.update(fault_rate=args.fault_rate, poll_fault_rate=args.poll_fault_rate, seed=1)
            opts = RunOptions(
                cache_root=Path(tmp) / "cache",
                backend="ndif",
                ndif_host=srv.url,
                batch_rows=rows,
                retry=RetrySettings(10, 0.01, 0.05, 0.0),
                poll_initial_s=0.02,
            )
            t0 = time.perf_counter()
            rep = runner.run(spec, opts)
            wall = time.perf_counter() - t0
            c = srv.counters()
    n = len(rep.trials)
    per_k = lambda x: 1000 * x / n  # noqa: E731
    print(f"sweep: {n} trials ({args.concepts} concepts × {len(spec.strengths)} strengths × "
          f"{len(spec.layers or ())} layers × {args.samples} samples + {args.controls} controls), "
          f"{rows} rows per request ({args.preset} preset), fault rate {args.fault_rate:.0%}")  # fmt: skip
    print(f"{'metric':<34}{'total':>12}{'per 1,000 trials':>20}")
    for name, value in [
        ("submitted requests (POST /request)", c["requests"]),
        ("  of which accepted", c["accepted"]),
        ("status polls (GET /response)", c["polls"]),
        ("  of which answered 502", c["poll_errors"]),
        ("result downloads", c["downloads"]),
        ("bytes uploaded (request payloads)", c["upload_bytes"]),
        ("bytes downloaded", c["result_bytes"]),
    ]:
        print(f"{name:<34}{value:>12,}{per_k(value):>20,.1f}")
    posts = max(c["requests"], 1)
    print(f"{'bytes uploaded per request':<34}{c['upload_bytes'] / posts:>12,.0f}")
    print(f"{'bytes downloaded per request':<34}{c['result_bytes'] / max(c['downloads'], 1):>12,.0f}")
    print(f"{'bytes downloaded per trial':<34}{c['result_bytes'] / n:>12,.0f}")
    print(f"{'one request per trial (existing tools)':<34}{n:>12,}{1000:>20,.1f}")
    print(f"complete: {rep.complete}; wall {wall:.1f} s on the loopback server (tiny model, CPU)")


if __name__ == "__main__":
    main()
