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
    return {p.name for p in final_files(Path(), name)} | {"loss.csv", "identity.json", CHECKPOINT_DIR, VALIDATION_DIR}


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
    from ..io_utils import recover_folder

    for d in list(root.iterdir()):
        staged = re.match(r"^\.(checkpoint-\d+)\.(staging|backup)-\d+-[0-9a-f]+$", d.name)
        if staged:  # the staging writer's own leftovers
            recover_folder(root / staged.group(1))
            continue
        # The names an older version used.
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
    """Replace ``lora_dir`` by the complete ``staged`` folder (a finished overwrite).

    Through the one staging writer (`io_utils.staged_folder`): the user's own files in the old
    folder (class images, notes) are carried into the new one, the old run's outputs go, and a
    kill at any moment leaves the complete old or new LoRA. ``staged`` is removed afterwards; a
    kill before that leaves it finished, and `_recover_swap` swaps it in again (the same files).
    """
    from ..io_utils import link_tree, staged_folder

    with staged_folder(lora_dir, overwrite=True, field="output_dir", replaces=_run_outputs(name)) as stage:
        for entry in staged.iterdir():
            link_tree(entry, stage / entry.name)
    shutil.rmtree(staged, ignore_errors=True)


def _recover_swap(lora_dir: Path, name: str) -> None:
    """Finish an overwrite that a kill interrupted while it swapped folders."""
    staged, replaced = staging_dir(lora_dir), _replaced_dir(lora_dir)
    if replaced.is_dir() and not lora_dir.exists():  # left by an older version between its renames
        os.replace(replaced, lora_dir)
    if staged.is_dir() and _already_swapped(staged, lora_dir, name):
        # Killed after the new LoRA was swapped in, before its working folder was removed.
        shutil.rmtree(staged, ignore_errors=True)
    elif staged.is_dir() and is_finished(staged, name):
        log.info("finishing an interrupted overwrite of %s", lora_dir)
        _swap_into_place(staged, lora_dir, name)
    elif replaced.is_dir():
        if lora_dir.exists():
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(replaced, lora_dir)


def _already_swapped(staged: Path, lora_dir: Path, name: str) -> bool:
    """Whether ``lora_dir`` is the finished LoRA that ``staged`` (an overwrite's working folder,
    without final files) trained: the same last checkpoint."""
    if is_finished(staged, name) or not is_finished(lora_dir, name):
        return False
    mine, there = list_checkpoints(staged), list_checkpoints(lora_dir)
    if not mine or not there or mine[-1].name != there[-1].name:
        return False
    a, b = mine[-1] / "trainer_state.json", there[-1] / "trainer_state.json"
    return a.read_bytes() == b.read_bytes()


@dataclass
class OutputPlan:
    """Where a run writes (``work``), where its LoRA ends up (``final``) and what it resumes."""

    work: Path
    final: Path
    resume_from: Path | None
    created: bool = False  # the run makes ``work``: nothing of the user's is in it

    @property
    def staged(self) -> bool:
        return self.work != self.final

    def discard_if_unused(self) -> None:
        """After a failed or stopped run: a folder this run made (a fresh run's ``lora/NAME``, an
        overwrite's staging folder) that holds no checkpoint has nothing to resume, so it goes
        (a full disk does not leave ``NAME/`` with only training_config.json). The old LoRA of
        an overwrite was never touched."""
        if (self.staged or self.created) and not list_checkpoints(self.work):
            shutil.rmtree(self.work, ignore_errors=True)


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
    return OutputPlan(out, out, None, created=not out.exists())


def save_final(output: OutputPlan, config: LoraTrainingConfig, models: dict[str, Any], history: list,
               resolution: int) -> dict[str, Path]:
    """Write the LoRA in both formats and the loss log, and put the finished folder in place.

    ``models`` maps component names ("unet", "text_encoder", "text_encoder_2") to the models
    carrying the training adapter; the text encoders' adapters are written when they trained.
    SDXL's kohya file gets kohya's SDXL naming (``save_lora`` tells from the UNet).

    The final files are written into a staging folder with (hard links to) the run's checkpoints
    and config, which then replaces ``lora/NAME`` in one swap (`io_utils.staged_folder`): the
    LoRA appears complete or not at all, and until then the old folder (with the checkpoints a
    resume needs) is untouched.
    """
    from ..io_utils import link_tree, staged_folder
    from ..lora import save_lora

    work, final = output.work, output.final
    # An overwrite drops every output of the old run; a run in place replaces only its final files.
    replaces = _run_outputs(config.name) if output.staged else {p.name for p in weight_files(Path(), config.name)}
    text = {c: models.get(c) if config.trains(c) else None for c in ("text_encoder", "text_encoder_2")}
    with staged_folder(final, overwrite=True, field="output_dir", replaces=replaces | {"loss.csv"}) as stage:
        files = save_lora(models["unet"], text["text_encoder"], stage, config.name,
                          text_encoder_2=text["text_encoder_2"], adapter_name=ADAPTER_NAME, overwrite=True,
                          kohya_metadata={"ss_sd_model_name": config.model,
                                          "ss_resolution": f"({resolution}, {resolution})",
                                          "ss_steps": str(config.max_train_steps),
                                          "ss_learning_rate": str(config.learning_rate),
                                          "ss_seed": str(config.seed), "ss_trigger_word": config.trigger_word})
        files["loss_csv"] = write_loss_csv(stage / "loss.csv", history)
        files["config"] = stage / "training_config.json"
        if output.staged:
            # The overwrite's working folder (checkpoints, config, validation) becomes the LoRA's.
            for entry in work.iterdir():
                if not os.path.lexists(stage / entry.name):
                    link_tree(entry, stage / entry.name)
        files = {k: final / p.relative_to(stage) for k, p in files.items()}
    if output.staged:
        shutil.rmtree(work, ignore_errors=True)  # a kill before this: _recover_swap removes it
    log.info("saved LoRA %r to %s", config.name, final)
    return files
