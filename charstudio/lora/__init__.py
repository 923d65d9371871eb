"""LoRA adapters for SD 1.x and SDXL: load, save, convert between formats, and mix.

Two file formats are written and read:

* ``diffusers`` -- ``pytorch_lora_weights.safetensors``: peft keys prefixed with the component
  (``unet.down_blocks.0...to_q.lora_A.weight``) and the peft ``LoraConfig`` of each component in
  the safetensors header (``lora_adapter_metadata``), so rank and alpha come back exactly.
  This is what ``pipe.load_lora_weights`` and ``save_lora_weights`` use.
* ``kohya`` -- ``NAME.safetensors``: ``lora_unet_*`` / ``lora_te_*`` keys with ``lora_down`` /
  ``lora_up`` / ``alpha`` (kohya sd-scripts, A1111, ComfyUI, most civitai files).

Older diffusers files (``.lora.down.weight``, ``to_q_lora``, ``lora_linear_layer``) load too.
Every file is checked against the model (module names and tensor shapes) *before* anything is
loaded, so a LoRA for another architecture fails with a message that says so and leaves the
model untouched. Only safetensors files are read: pickled LoRA files can run code when loaded.

The functions that act on a model take ``pipe``: any diffusers SD 1.x or SDXL pipeline (or object with
``unet`` and ``text_encoder`` (and ``text_encoder_2``) attributes). Pipelines that share one UNet share its adapters.

Where things live: ``files`` (finding and reading LoRA files), ``formats`` (the two formats,
conversion and writing), ``kohya`` (the kohya/A1111 key layout, read and written) and ``runtime`` (checking a file against a model, loading it as a
peft adapter, weights, unloading and fusing).
"""

from .files import DEFAULT_LORA_DIR, LORA_WEIGHTS_NAME, list_loras, read_lora_file, resolve_lora_path
from .formats import (
    ADAPTER_METADATA_KEY,
    TEXT_ENCODER_TARGET_MODULES,
    UNET_TARGET_MODULES,
    LoraFormat,
    LoraInfo,
    LoraWeights,
    adapter_state,
    convert_lora,
    detect_format,
    inspect_lora,
    save_lora,
    split_lora,
    write_diffusers_lora,
)
from .kohya import peft_to_kohya, write_kohya_lora
from .runtime import (
    check_lora_fits,
    default_adapter_name,
    fuse_loras,
    fused_loras,
    load_lora,
    loaded_adapters,
    remove_adapter,
    set_loras,
    unfuse_loras,
    unload_loras,
)

__all__ = [
    "ADAPTER_METADATA_KEY",
    "DEFAULT_LORA_DIR",
    "LORA_WEIGHTS_NAME",
    "LoraFormat",
    "LoraInfo",
    "LoraWeights",
    "TEXT_ENCODER_TARGET_MODULES",
    "UNET_TARGET_MODULES",
    "loaded_adapters",
    "adapter_state",
    "check_lora_fits",
    "convert_lora",
    "default_adapter_name",
    "detect_format",
    "fuse_loras",
    "fused_loras",
    "inspect_lora",
    "list_loras",
    "load_lora",
    "peft_to_kohya",
    "read_lora_file",
    "remove_adapter",
    "resolve_lora_path",
    "save_lora",
    "set_loras",
    "split_lora",
    "unfuse_loras",
    "unload_loras",
    "write_diffusers_lora",
    "write_kohya_lora",
]
