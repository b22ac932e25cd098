"""Every key and hash the cache is addressed and verified by, derived in one place.

- trial key: sha256 of the canonical JSON of the trial's fields (`spec.Trial.key`, DESIGN.md
  invariant 1); recomputed by `results_frame` from the stored JSON
- recipe id: the first 16 hex of the sha256 of the recipe's canonical identity
- model key: the first 24 hex of the sha256 of the ModelIdentity (repo, weights, dtype, tokenizer)
- vector id: sha256 of (model key, recipe id, layer, concept)
- experiment id: the first 16 hex of the sha256 of (spec, model identity)
- batch id: sha256 of the sorted trial keys (its sampling seed: the first 15 hex)
- result and grade hashes: what a stored result / grade row carries, so an edit no longer verifies
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def trial_key(trial: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(trial))


def recipe_id(identity: dict[str, Any] | str) -> str:
    """From the recipe's identity, or from its canonical JSON as stored."""
    return sha256_hex(identity if isinstance(identity, str) else canonical_json(identity))[:16]


def model_key(identity: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(identity))[:24]


def vector_id(model_key: str, recipe_id: str, layer: int, concept: str) -> str:
    return sha256_hex(canonical_json([model_key, recipe_id, layer, concept]))


def experiment_id(spec: dict[str, Any], identity: dict[str, Any]) -> str:
    return sha256_hex(canonical_json([spec, identity]))[:16]


def batch_id(keys: list[str]) -> str:
    return sha256_hex(canonical_json(sorted(keys)))


def result_sha(
    key: str,
    response_ids: list[int],
    response: str,
    diagnostics: dict[str, Any],
    readout: dict[str, Any] | None = None,
) -> str:
    """A done trial's result hash; a readout trial's (`trials.readout_json`) covers its readout
    too. Without a readout the hash is the one every existing row carries."""
    if readout is None:
        return sha256_hex(canonical_json([key, response_ids, response, diagnostics]))
    return sha256_hex(canonical_json([key, response_ids, response, diagnostics, readout]))


def grade_sha(trial_key: str, trial_result_sha: str | None, grader: str, version: str, grade_json: str) -> str:
    """The hash a grade row carries: its stored JSON text bound to the trial's result hash and the
    grader's identity, so an edited grade, a grade moved to another trial or judge, or a grade
    whose trial's result changed no longer verifies."""
    return sha256_hex(canonical_json([trial_key, trial_result_sha, grader, version, grade_json]))
