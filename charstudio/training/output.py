"""The LoRA folder a run writes: its final files, the staged folder of an --overwrite run
and the swap that puts it in place only once it is complete."""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..io_utils import check_output_dir
from ..lora import LORA_WEIGHTS_NAME
from .checkpoint import CHECKPOINT_DIR, list_checkpoints, write_loss_csv
from .config import ADAPTER_NAME, LoraTrainingConfig

log = logging.getLogger(__name__)
VALIDATION_DIR = "validation"


# The files that make a finished LoRA folder; it is finished only when all of them are there.
def weight_files(lora_dir: Path, name: str) -> list[Path]:
    """The LoRA's weights in both formats (diffusers/peft, kohya/A1111)."""
    return [lora_dir / LORA_WEIGHTS_NAME, lora_dir / f"{name}.safetensors"]


def final_files(lora_dir: Path, name: str) -> list[Path]:
    """The files a finished ``lora/NAME`` holds: both weight files and the config."""
    return [*weight_files(lora_dir, name), lora_dir / "training_config.json"]


def is_finished(lora_dir: Path, name: str) -> bool:
    """True when every final file of the LoRA is there (a kill between them leaves it unfinished)."""
    return all(p.is_file() for p in final_files(lora_dir, name))


# What a run writes into lora/NAME; anything else there (class_images, a user's notes) is kept
# across an overwrite.
def _run_outputs(name: str) -> set[str]:
    return {p.name for p in final_files(Path(), name)} | {"loss.csv", CHECKPOINT_DIR, VALIDATION_DIR}


def staging_dir(lora_dir: Path) -> Path:
    """Where an overwriting run builds the new LoRA; it replaces ``lora_dir`` only once complete."""
    return lora_dir.with_name(f".{lora_dir.name}.overwrite")


def _replaced_dir(lora_dir: Path) -> Path:
    return lora_dir.with_name(f".{lora_dir.name}.replaced")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_checkpoint_leftovers(lora_dir: Path) -> None:
    """Temp folders that a killed checkpoint write left (``.tmp-*`` / ``.old-*`` of a dead process)."""
    root = lora_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return
    for d in root.iterdir():
        m = re.match(r"^\.(tmp|old)-(checkpoint-\d+)-(\d+)$", d.name)
        if not m or not d.is_dir() or _pid_alive(int(m.group(3))):
            continue
        kind, target = m.group(1), root / m.group(2)
        if kind == "old" and not target.exists():
            # Killed between moving the old checkpoint aside and moving the new one in: the old
            # one is complete, so it goes back.
            os.replace(d, target)
            log.info("restored %s from an interrupted checkpoint write", target)
        else:
            shutil.rmtree(d, ignore_errors=True)
            log.info("removed %s, left by an interrupted checkpoint write", d)


def _swap_into_place(staged: Path, lora_dir: Path, name: str) -> None:
    """Replace ``lora_dir`` by the complete ``staged`` folder.

    The user's own files in the old folder (class images, notes) move into the new one first.
    Every step can be interrupted: `_recover_swap` finishes the job on the next run, because the
    staged folder is complete before this starts.
    """
    replaced = _replaced_dir(lora_dir)
    if lora_dir.is_dir():
        keep = _run_outputs(name)
        for entry in lora_dir.iterdir():
            if entry.name not in keep and not (staged / entry.name).exists():
                os.replace(entry, staged / entry.name)
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(lora_dir, replaced)
    os.replace(staged, lora_dir)
    shutil.rmtree(replaced, ignore_errors=True)


def _recover_swap(lora_dir: Path, name: str) -> None:
    """Finish an overwrite that a kill interrupted while it swapped folders."""
    staged, replaced = staging_dir(lora_dir), _replaced_dir(lora_dir)
    if staged.is_dir() and is_finished(staged, name):
        log.info("finishing an interrupted overwrite of %s", lora_dir)
        _swap_into_place(staged, lora_dir, name)
    elif replaced.is_dir():
        if lora_dir.exists():
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(replaced, lora_dir)


@dataclass
class OutputPlan:
    """Where a run writes (``work``), where its LoRA ends up (``final``) and what it resumes."""

    work: Path
    final: Path
    resume_from: Path | None

    @property
    def staged(self) -> bool:
        return self.work != self.final


def prepare_output(config: LoraTrainingConfig, is_main: bool) -> OutputPlan:
    """Check what is already in ``lora/NAME`` against resume/overwrite, and plan the run.

    Nothing of an existing LoRA is deleted here. An overwrite trains into a staging folder
    beside it (`staging_dir`), which replaces the old folder only when its files are complete.
    """
    check_output_dir(config.output_dir, field="output_dir")  # a file, no permission, inside the package
    out = config.lora_dir
    if out.exists() and not out.is_dir():
        raise OutputError(f"output_dir={str(out)!r} is a file: remove it or choose another name")
    if is_main:
        _recover_swap(out, config.name)
        _clean_checkpoint_leftovers(out)
        _clean_checkpoint_leftovers(staging_dir(out))
    staged = staging_dir(out)
    finished = is_finished(out, config.name)
    some_final = any(p.is_file() for p in weight_files(out, config.name))
    checkpoints = list_checkpoints(out)
    if config.resume:
        # An overwrite that was stopped continues in its staging folder, the old LoRA untouched.
        staged_checkpoints = list_checkpoints(staged)
        if staged_checkpoints:
            return OutputPlan(staged, out, staged_checkpoints[-1])
        if finished and not config.overwrite:
            raise OutputError(f"{str(out)!r} already holds a finished LoRA: pass overwrite=True (CLI: --overwrite) "
                              "to train it further, or choose another name")
        if not checkpoints:
            # Starting from step 0 here would report a fresh run as "resumed"; say so instead.
            raise OutputError(f"resume=True, but {str(out)!r} has no checkpoint to resume from: start a new run "
                              "(without resume; CLI: no --resume)")
        # A half-written LoRA (stopped between its final files) resumes from its last
        # checkpoint, which training writes before the final files, and completes them.
        return OutputPlan(out, out, checkpoints[-1])
    leftovers = some_final or bool(checkpoints) or (out / "training_config.json").exists()
    if leftovers and not config.overwrite:
        if finished:
            what, hint = "a LoRA", ""
        elif some_final:
            what, hint = "a LoRA whose final files were not all written", ", or resume=True (CLI: --resume) to complete it"
        else:
            what, hint = "checkpoints of an earlier run", ", or resume=True (CLI: --resume) to continue it"
        raise OutputError(f"{str(out)!r} already holds {what}: pass overwrite=True (CLI: --overwrite) to replace it"
                          + hint)
    if leftovers:
        # Start over in the staging folder; an earlier unfinished overwrite there is dropped.
        if is_main:
            shutil.rmtree(staged, ignore_errors=True)
        return OutputPlan(staged, out, None)
    return OutputPlan(out, out, None)


def save_final(output: OutputPlan, config: LoraTrainingConfig, models: dict[str, Any], history: list,
               resolution: int) -> dict[str, Path]:
    """Write the LoRA in both formats and the loss log; a staged overwrite then replaces the old folder.

    ``models`` maps component names ("unet", "text_encoder", "text_encoder_2") to the models
    carrying the training adapter; the text encoders' adapters are written when they trained.
    SDXL's kohya file gets kohya's SDXL naming (``save_lora`` tells from the UNet).
    """
    from ..lora import save_lora

    out = output.work
    text = {c: models.get(c) if config.trains(c) else None for c in ("text_encoder", "text_encoder_2")}
    files = save_lora(models["unet"], text["text_encoder"], out, config.name, text_encoder_2=text["text_encoder_2"],
                      adapter_name=ADAPTER_NAME, overwrite=True,
                      kohya_metadata={"ss_sd_model_name": config.model, "ss_resolution": f"({resolution}, {resolution})",
                                      "ss_steps": str(config.max_train_steps),
                                      "ss_learning_rate": str(config.learning_rate),
                                      "ss_seed": str(config.seed), "ss_trigger_word": config.trigger_word})
    files["loss_csv"] = write_loss_csv(out / "loss.csv", history)
    files["config"] = out / "training_config.json"
    if output.staged:
        # The new LoRA is complete: only now does it replace the old one.
        _swap_into_place(output.work, output.final, config.name)
        files = {k: output.final / p.relative_to(output.work) for k, p in files.items()}
    log.info("saved LoRA %r to %s", config.name, output.final)
    return files
