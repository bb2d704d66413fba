"""A PEFT LoRA adapter → a GGUF LoRA file that llama.cpp puts on the quantized base model.

The local generator runs the base model through llama.cpp, which takes adapters only as GGUF
LoRA files. llama.cpp ships its own converter script, but not inside the `llama-cpp-python`
package, so this does the same few steps with the `gguf` library (its writer and its tensor
name map):

- tensor names: `…layers.N.self_attn.q_proj.lora_A.weight` → `blk.N.attn_q.weight.lora_a`;
- A is written as (rank, in) and B as (out, rank), the order llama.cpp checks on load;
- llama.cpp stores the query and key projections with their rows permuted for its rotary
  embedding (transformers undoes that when it reads a GGUF), so B's rows for q and k are
  permuted the same way, or the adapter would scramble the attention heads;
- `adapter.lora.alpha` carries the scale; llama.cpp divides it by the rank itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

PEFT_NAME = re.compile(r"^(?:base_model\.model\.)?(model\.layers\.\d+\.[\w.]+)\.lora_([AB])\.weight$")


class AdapterConversionError(ValueError):
    """The PEFT adapter cannot be written as a GGUF LoRA (unsupported layer or shape)."""


def _permute_rows(weights: npt.NDArray[np.float32], n_head: int) -> npt.NDArray[np.float32]:
    """llama.cpp's row order for a rotary projection (its converter's `permute`)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def convert(adapter_dir: Path, base_config: Mapping[str, Any], out_file: Path) -> Path:
    """Write `out_file` from the PEFT adapter in `adapter_dir`; `base_config` is the base
    model's `config.json` (heads, layers, architecture)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterConversionError(f"only LoRA adapters can be served locally, not {config.get('peft_type')}")
    if config.get("use_dora") or config.get("use_rslora"):
        raise AdapterConversionError("DoRA / rsLoRA adapters cannot be written as a GGUF LoRA")
    if config.get("model_type", base_config.get("model_type")) != "llama" and base_config.get("model_type") != "llama":
        raise AdapterConversionError(f"unsupported architecture {base_config.get('model_type')!r}")
    n_layers = int(base_config["num_hidden_layers"])
    n_head = int(base_config["num_attention_heads"])
    n_head_kv = int(base_config.get("num_key_value_heads") or n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    for key, value in tensors.items():
        found = PEFT_NAME.match(key)
        if not found:
            raise AdapterConversionError(f"unexpected tensor {key!r} in the adapter")
        pairs.setdefault(found.group(1), {})[found.group(2)] = value.astype(np.float32)

    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(config.get("lora_alpha", config.get("r", 8))))
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterConversionError(f"{module} has only lora_{''.join(ab)}")
        target = names.get_name(module, try_suffixes=(".weight",))
        if target is None:
            raise AdapterConversionError(f"no llama.cpp tensor for {module!r}")
        a, b = ab["A"], ab["B"]
        if module.endswith("q_proj"):
            b = _permute_rows(b, n_head)
        elif module.endswith("k_proj"):
            b = _permute_rows(b, n_head_kv)
        writer.add_tensor(f"{target}.weight.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{target}.weight.lora_b", np.ascontiguousarray(b))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file
