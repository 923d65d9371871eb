"""Checkpoints for resume=True: adapter weights, optimizer and lr-scheduler state as
safetensors plus JSON (nothing pickled), and the model fingerprint that a resume must match."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io_utils import atomic_write
from .config import ADAPTER_NAME, LoraTrainingConfig

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(lora_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``lora_dir/checkpoints``, oldest first (temp folders are ignored)."""
    root = Path(lora_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _CHECKPOINT_RE.match(d.name)
        if m and d.is_dir() and (d / "trainer_state.json").is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def flatten_optimizer(state: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and the rest (for JSON)."""
    import torch

    tensors: dict[str, Any] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        meta_state[str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                name = f"{idx}.{key}"
                tensors[name] = value.detach().cpu().contiguous()
                meta_state[str(idx)][key] = {"tensor": name}
            else:
                meta_state[str(idx)][key] = {"value": value}
    return tensors, {"state": meta_state, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entry.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def write_json(path: Path, data: Any, overwrite: bool = True) -> Path:
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"), overwrite=overwrite)


def write_loss_csv(path: Path, history: list[tuple[int, float, float, float]]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr", "elapsed_s"])
            for step, loss, lr, elapsed in history:
                w.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{elapsed:.3f}"])
    return atomic_write(path, write, overwrite=True)


def model_fingerprint(unet: Any, text_encoder: Any, text_encoder_2: Any = None) -> str:
    """A short hash of the base model's architecture and a few weights (of every text encoder:
    SDXL's second too), to refuse mixing bases."""
    import torch

    h = hashlib.sha256()
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    # fp16 bytes so that fp32 and fp16 loads of the same checkpoint agree.
    with torch.no_grad():
        h.update(unet.conv_in.weight.detach().to("cpu", torch.float16).numpy().tobytes())
        for encoder in (text_encoder, text_encoder_2):
            if encoder is not None:  # SD 1.x has no second encoder: its fingerprints stay as they were
                emb = encoder.get_input_embeddings().weight[:16]
                h.update(emb.detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


def _every_name(folder: Path) -> list[str]:
    """A checkpoint's files: all of the old one goes when one of the same step replaces it."""
    return [p.name for p in folder.iterdir()]


def save_checkpoint(out: Path, step: int, identity: dict, config: LoraTrainingConfig, accelerator: Any,
                     unet: Any, text_encoder: Any, optimizer: Any, lr_scheduler: Any,
                     history: list, elapsed: float, *, text_encoder_2: Any = None) -> Path | None:
    """Write ``checkpoints/checkpoint-STEP`` as a whole, through the one staging writer
    (`io_utils.staged_folder`): a kill or a full disk leaves no half checkpoint, and a checkpoint
    of the same step (a repeated resume) is replaced whole."""
    import torch
    from safetensors.torch import save_file

    from ..io_utils import staged_folder
    from ..lora import write_diffusers_lora
    from ..lora.formats import adapter_states

    final = out / CHECKPOINT_DIR / f"checkpoint-{step:06d}"
    if accelerator.is_main_process:
        # 1. Everything goes into a staging folder beside it first.
        with staged_folder(final, overwrite=True, field="output_dir", replaces=_every_name) as tmp:
            models = {"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
            states, configs = adapter_states({c: m for c, m in models.items() if config.trains(c)}, ADAPTER_NAME)
            write_diffusers_lora(tmp / "pytorch_lora_weights.safetensors", states, configs)
            tensors, meta = flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(_json_safe(meta)), encoding="utf-8")
            rng = {"torch_cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            save_file(rng, str(tmp / "rng.safetensors"))
            state = {"step": step, "elapsed": elapsed, "history": history, "identity": identity,
                     "num_processes": accelerator.num_processes, "batch_size": config.batch_size,
                     "gradient_accumulation_steps": config.gradient_accumulation_steps,
                     "lr_scheduler": _json_safe(lr_scheduler.state_dict())}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        # 2. Prune old checkpoints only after the new one is complete.
        write_loss_csv(out / "loss.csv", history)
        if config.checkpoints_total_limit:
            for old_ckpt in list_checkpoints(out)[: -config.checkpoints_total_limit]:
                shutil.rmtree(old_ckpt, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final if final.is_dir() else None


def load_checkpoint(path: Path, identity: dict, config: LoraTrainingConfig, accelerator: Any, unet: Any,
                     text_encoder: Any, optimizer: Any, lr_scheduler: Any, *,
                     text_encoder_2: Any = None) -> tuple[int, float, list]:
    import torch
    from peft import set_peft_model_state_dict

    from ..weights import read_tensors

    def read(name: str) -> dict[str, Any]:
        return read_tensors(path / name, "resume", what="checkpoint file",
                            advice="resume from another checkpoint, or pass overwrite=True without resume to start over")

    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    # 1. Refuse checkpoints of another base model or adapter shape: they cannot continue this run.
    saved = state.get("identity", {})
    # Checkpoints written before an identity field existed were made with its old behaviour; the
    # prompts were not recorded then, so those checkpoints are not checked on them.
    before = {"pose_conditioning": False, "lora_layers": "attention", "train_text_encoder_2": False}
    for key in ("model_fingerprint", "rank", "alpha", "train_text_encoder", "train_text_encoder_2",
                "pose_conditioning", "lora_layers", "trigger_word", "instance_prompt"):
        if key not in saved and key not in before:
            continue
        if saved.get(key, before.get(key)) != identity[key]:
            what = {"model_fingerprint": "base model"}.get(key, key)
            raise ConfigError("resume", str(path),
                              f"the checkpoint was made with a different {what} "
                              f"({key}={saved.get(key)!r}, this run has {identity[key]!r}; "
                              f"checkpoint model={saved.get('model')!r}, this run model={identity['model']!r}); "
                              "resume with the same settings, or pass overwrite=True without resume to start over")
    if (state.get("num_processes"), state.get("batch_size"), state.get("gradient_accumulation_steps")) != (
            accelerator.num_processes, config.batch_size, config.gradient_accumulation_steps):
        log.warning("resuming with a different number of processes, batch size or accumulation: "
                    "the data order will differ from an uninterrupted run")
    # 2. Adapter weights, exactly as saved.
    tensors = read("pytorch_lora_weights.safetensors")
    for comp, model in (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        sd = {k[len(comp) + 1:]: v for k, v in tensors.items() if k.startswith(comp + ".")}
        if not sd or model is None:
            continue
        if comp != "unet" and not hasattr(model, "text_model"):
            sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
        result = set_peft_model_state_dict(model, sd, adapter_name=ADAPTER_NAME)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise ConfigError("resume", str(path), f"its adapter does not fit this model ({unexpected[0]}, ...)")
    # 3. Optimizer, scheduler and global RNG.
    opt_tensors = read("optimizer.safetensors")
    opt_meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    optimizer.load_state_dict(unflatten_optimizer(opt_tensors, opt_meta))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    rng = read("rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda_"))]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    history = [tuple(row) for row in state.get("history", [])]
    return int(state["step"]), float(state.get("elapsed", 0.0)), history
