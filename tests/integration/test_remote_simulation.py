"""Every trace the package builds survives nnsight's `remote="local"` simulation (serialise, hide
non-installed modules, deserialise, run) and gives exactly the local results."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from helpers import tiny_spec

from remote_introspect.execution import runner
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.spec import ExperimentSpec


def _spec(mode: str) -> ExperimentSpec:
    return tiny_spec(strengths=(2.0, 5.0), layers=(1, 2), samples=1, controls=2, strength_mode=mode)


def _rows(cache: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(cache / "results.sqlite") as c:
        return {k: (r, d) for k, r, d in c.execute("SELECT key, response_ids, diagnostics_json FROM trials")}


def test_simulated_remote_equals_local_for_every_trace(tmp_path: Path) -> None:
    for mode in ("absolute", "mlp-norm-matched", "relative"):
        plain = runner.run(_spec(mode), RunOptions(cache_root=tmp_path / f"plain-{mode}"))
        sim = runner.run(_spec(mode), RunOptions(cache_root=tmp_path / f"sim-{mode}", remote_simulation=True))
        assert plain.complete and sim.complete
        a, b = _rows(tmp_path / f"plain-{mode}"), _rows(tmp_path / f"sim-{mode}")
        assert a == b and len(a) == 2 * 2 * 2 + 2
