"""#34 item 3: an output of several files is replaced as a unit (io_utils.staged_folder), and a
full disk gives a one-line error naming the path and the flag (item 5)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charstudio.errors import OutputError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _ours(parent: Path) -> list[str]:
    """Staging / backup / temporary names left in ``parent`` (none may stay under a user's folder)."""
    return sorted(p.name for p in parent.rglob("*") if ".staging-" in p.name or ".backup-" in p.name
                  or p.name.endswith(".tmp"))


# --- The writer itself: a kill at every file-system step of a write ---------------------------

def _write(target: Path, files: dict[str, str], overwrite: bool, die_at: int | None, exchange: bool) -> int:
    """Write ``files`` into ``target`` through staged_folder in a forked child that dies with
    ``os._exit`` (no cleanup runs, as with SIGKILL) at the ``die_at``-th file-system call."""
    from charstudio.io_utils import staged_folder

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        import charstudio.io_utils as io_utils

        calls = [0]

        def dying(fn):
            def wrapped(*a, **k):
                calls[0] += 1
                if calls[0] == die_at:
                    os._exit(9)
                return fn(*a, **k)
            return wrapped

        for name in ("rename", "replace", "link", "symlink", "mkdir"):
            setattr(os, name, dying(getattr(os, name)))
        shutil.rmtree = dying(shutil.rmtree)
        shutil.copymode = dying(shutil.copymode)
        io_utils._exchange = dying(io_utils._exchange if exchange else lambda a, b: False)
        try:
            with staged_folder(target, overwrite=overwrite, replaces=["old-only.txt"]) as stage:
                for name, text in files.items():
                    (stage / name).write_text(text)
                    calls[0] += 1
                    if calls[0] == die_at:
                        os._exit(9)
        except BaseException:
            os._exit(3)
        os._exit(0)
    return os.waitpid(pid, 0)[1] >> 8


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_kill_at_every_step_of_a_replacement_leaves_the_old_or_the_new_folder(tmp_path, exchange):
    from charstudio.io_utils import recover_folder

    target = tmp_path / "sheet"
    old = {"a.txt": "old a", "old-only.txt": "old", "notes.txt": "the user's"}
    new = {"a.txt": "new a", "b.txt": "new b"}
    outcomes = set()
    for die_at in range(1, 60):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for name, text in old.items():
            (target / name).write_text(text)
        (target / "sub").mkdir()
        (target / "sub" / "kept.txt").write_text("kept")
        code = _write(target, new, overwrite=True, die_at=die_at, exchange=exchange)
        # What a later write does first; a reader between the two renames of the fallback
        # finds the backup put back.
        recover_folder(target)
        got = {k: v.decode() for k, v in _tree(target).items()}
        old_state = {**old, "sub/kept.txt": "kept"}
        new_state = {**new, "notes.txt": "the user's", "sub/kept.txt": "kept"}  # old-only.txt was the old output's
        assert got in (old_state, new_state), f"killed at call {die_at}: {sorted(got)}"
        assert _ours(tmp_path) == [], f"killed at call {die_at}"
        outcomes.add("new" if got == new_state else "old")
        if code == 0:
            break
    else:
        pytest.fail("the write never finished")
    assert outcomes == {"old", "new"} and code == 0


def test_a_new_folder_appears_whole_or_not_at_all(tmp_path):
    from charstudio.io_utils import recover_folder

    target = tmp_path / "deep" / "frames"
    for die_at in range(1, 30):
        code = _write(target, {"f0.png": "0", "f1.png": "1", "frames.json": "{}"}, False, die_at, True)
        recover_folder(target)
        assert not target.exists() or sorted(p.name for p in target.iterdir()) == ["f0.png", "f1.png", "frames.json"]
        assert _ours(tmp_path) == []
        if code == 0:
            break
    assert target.is_dir()


def test_refusals_and_failures_leave_the_old_folder_untouched(tmp_path):
    from charstudio.io_utils import staged_folder

    target = tmp_path / "out"
    with staged_folder(target) as stage:
        (stage / "a.png").write_text("1")
    before = _tree(target)
    # A name that is already there, without overwrite.
    with pytest.raises(OutputError, match=r"^--out='.*out': .*a\.png' already exists: pass overwrite"):
        with staged_folder(target, field="--out") as stage:
            (stage / "a.png").write_text("2")
    # A full disk in the middle of the block.
    with pytest.raises(OutputError) as info:
        with staged_folder(target, overwrite=True, field="--out") as stage:
            raise OSError(errno.ENOSPC, "No space left on device", str(stage / "b.png"))
    text = str(info.value)
    assert text.startswith(f"--out={str(target)!r}: cannot write {str(target / 'b.png')!r}: no space left")
    assert ".staging-" not in text
    # Ctrl-C: no error of ours, the old folder kept.
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(target, overwrite=True) as stage:
            (stage / "a.png").write_text("3")
            raise KeyboardInterrupt
    assert _tree(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_links_are_never_followed(tmp_path):
    from charstudio.io_utils import staged_folder

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    link = tmp_path / "linked"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputError, match="is a symbolic link"):
        with staged_folder(link, overwrite=True) as stage:
            (stage / "a.png").write_text("1")
    # A link inside the old folder is carried as a link; what it points to is not touched.
    target = tmp_path / "out"
    target.mkdir()
    (target / "shortcut").symlink_to(outside, target_is_directory=True)
    with staged_folder(target, overwrite=True, replaces=["shortcut"]) as stage:
        (stage / "a.png").write_text("1")
    assert not (target / "shortcut").exists() and (outside / "precious.txt").read_text() == "keep"
    with staged_folder(target, overwrite=True) as stage:
        (stage / "b.png").write_text("1")
    assert (target / "a.png").is_file() and (outside / "precious.txt").read_text() == "keep"


# --- The real command, killed in its save phase ----------------------------------------------

def _sheet_state(out: Path) -> list[str]:
    """The pictures of the sheet in ``out``, checked complete and self-consistent."""
    data = json.loads((out / "sheet.json").read_text())
    pictures = sorted(p.name for p in out.glob("*.png") if p.name != "grid.png")
    assert (out / "grid.png").is_file()
    assert data["files"] == pictures and len(data["labels"]) == len(pictures)
    return pictures


def test_sigkill_in_the_save_phase_of_turnaround_overwrite_leaves_one_whole_sheet(tmp_path):
    """`kill -9` of the real `charstudio turnaround ... --overwrite` at seeded random moments
    after its staging folder appears: each time the folder is the whole old sheet (two views) or
    the whole new one (three), and the next run leaves no staging or temporary file."""
    out = tmp_path / "turn"
    base = [sys.executable, "-m", "charstudio", "turnaround", "a knight", "--model", "tiny", "--steps", "1",
            "--width", "32", "--height", "32", "--seed", "3", "--reference-strength", "0", "--out", str(out)]
    subprocess.run(base + ["--views", "front,back"], env=ENV, check=True, capture_output=True, timeout=120)
    old = _sheet_state(out)
    assert old == ["00-front.png", "01-back.png"]
    new = ["00-front.png", "01-side.png", "02-back.png"]
    views = {tuple(old): "front,side,back", tuple(new): "front,back"}  # each run replaces what is there
    rng = random.Random(20261207)
    seen = []
    for _ in range(3):
        before = _sheet_state(out)
        proc = subprocess.Popen(base + ["--views", views[tuple(before)], "--overwrite"], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The save phase starts when the first file appears (in the staging folder beside --out).
        names = {str(p) for p in tmp_path.rglob("*")}
        deadline = time.monotonic() + 120
        while {str(p) for p in tmp_path.rglob("*")} == names and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.02))  # somewhere in the save phase (or just after it)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _sheet_state(out)
        assert state in (old, new)
        seen.append(("killed" if proc.returncode == -signal.SIGKILL else "finished",
                     "replaced" if state != before else "kept"))
    assert any(how == "killed" for how, _ in seen), seen
    before = _sheet_state(out)
    done = subprocess.run(base + ["--views", views[tuple(before)], "--overwrite"], env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _sheet_state(out) == (new if before == old else old)
    assert _ours(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["turn"], seen


def test_a_sheet_is_not_replaced_without_overwrite(tiny_studio, tmp_path):
    sheet = tiny_studio.sheet("a knight", ["standing_front", "walking"], seed=3, num_inference_steps=1,
                              width=32, height=32)
    out = tmp_path / "sheet"
    sheet.save(out)
    before = _tree(out)
    with pytest.raises(OutputError, match=r"^directory='.*sheet': '.*00-standing-front.png' already exists: pass"):
        sheet.save(out)
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["sheet"]
    (out / "notes.txt").write_text("mine")
    smaller = tiny_studio.sheet("a knight", ["kneeling"], seed=3, num_inference_steps=1, width=32, height=32)
    smaller.save(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["00-kneeling.png", "grid.png", "notes.txt", "sheet.json"]


# --- Full disk --------------------------------------------------------------------------------

def _full_disk_after(n: int):
    """A PIL save that fills the disk after ``n`` pictures."""
    from PIL import Image

    real, count = Image.Image.save, [0]

    def save(self, fp, *a, **k):
        count[0] += 1
        if count[0] > n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fp, *a, **k)
    return save


def test_a_full_disk_while_saving_a_sheet_keeps_the_old_sheet(tiny_studio, tmp_path, monkeypatch, capsys):
    from charstudio.cli import main
    from PIL import Image

    out = tmp_path / "sheet"
    common = ["sheet", "a knight", "--model", "tiny", "--steps", "1", "--width", "32", "--height", "32",
              "--out", str(out)]
    assert main(common + ["--poses", "standing_front,walking"]) == 0
    before = _tree(out)
    capsys.readouterr()
    monkeypatch.setattr(Image.Image, "save", _full_disk_after(1))
    assert main(common + ["--poses", "standing_front,walking,kneeling", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out={str(out)!r}" in err and "no space left" in err, err
    assert ".staging-" not in err and "Traceback" not in err
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["sheet"]


def test_the_interpolate_apps_save_on_a_full_disk_leaves_no_folder(tiny_studio, tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    from PIL import Image

    from charstudio.interpolation import Interpolation
    from charstudio.interpolation.smoothness import smoothness
    from charstudio.ui.common import Gallery
    from charstudio.ui.interpolate import InterpolateApp

    class Recipe:
        def to_dict(self):
            return {"t": 0}

    frames = [Image.new("RGB", (16, 16), (i * 80, 0, 0)) for i in range(3)]
    app = InterpolateApp(tiny_studio, gallery=Gallery(), steps=2, frames=3, output_dir=str(tmp_path / "out"))
    app.interpolation = Interpolation(frames, [0.0, 0.5, 1.0], [Recipe()] * 3, smoothness(frames, None))
    monkeypatch.setattr(Image.Image, "save", _full_disk_after(1))
    assert app.save() == []
    assert app.status.level == "error" and "no space left" in app.status.text
    assert not (tmp_path / "out" / "interpolation-001").exists() and _ours(tmp_path) == []
    monkeypatch.undo()
    paths = app.save()
    folder = tmp_path / "out" / "interpolation-001"
    assert sorted(p.name for p in folder.iterdir()) == ["animation.gif", "frame_000.png", "frame_001.png",
                                                        "frame_002.png", "frames.json"]
    assert len(paths) == 4 and app.status.level == "ok"


def _lora_file(tmp_path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    src = tmp_path / "src.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(src))
    return src


FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"


def test_lora_convert_on_a_full_disk_names_the_file_and_the_argument(tmp_path):
    """A real process whose safetensors writer reports a full disk the way safetensors does."""
    src, dst = _lora_file(tmp_path), tmp_path / "out.safetensors"
    code = ("import sys, safetensors, safetensors.torch as st\n"
            "def full(*a, **k): raise safetensors.SafetensorError(%r)\n"
            "st.save_file = full\n"
            "from charstudio.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n" % FULL_DISK)
    done = subprocess.run([sys.executable, "-c", code, "lora-convert", "--to", "diffusers", str(src), str(dst)],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"charstudio: error: DST={str(dst)!r}"), err
    assert "no space left on the device" in err and "SafetensorError" not in err and "os error" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]


def test_train_lora_on_a_full_disk_names_the_folder_and_the_flag_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import safetensors
    import safetensors.torch

    from charstudio.cli import main

    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(data / f"img{i}.png")

    def full(*a, **k):
        raise safetensors.SafetensorError(FULL_DISK)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    lora = tmp_path / "lora"
    assert main(["train-lora", str(data), "--name", "aiko", "--model", "tiny", "--steps", "2", "--resolution", "64",
                 "--checkpoint-steps", "1", "--validation-images", "0", "--output-dir", str(lora)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("charstudio: error: --output-dir=") and str(lora / "aiko") in err, err
    assert "no space left on the device" in err and "SafetensorError" not in err
    # The run failed before its first checkpoint: no NAME/ with only training_config.json.
    assert not (lora / "aiko").exists() and _ours(tmp_path) == []


def test_a_full_disk_while_writing_the_final_lora_shows_no_half_lora(tmp_path, monkeypatch):
    """The final files appear together: a failure after the diffusers file leaves no folder that
    list_loras takes for a LoRA, and --resume completes it from the last checkpoint."""
    import charstudio.lora.formats as formats
    from charstudio.lora import list_loras
    from charstudio.training import LoraTrainingConfig, list_checkpoints, train_lora

    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(data / f"img{i}.png")
    settings = dict(model="tiny", data_dir=str(data), name="aiko", output_dir=str(tmp_path / "lora"),
                    max_train_steps=2, rank=4, batch_size=2, num_validation_images=0, checkpointing_steps=1,
                    resolution=64)
    real = formats.write_kohya_lora

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(formats, "write_kohya_lora", full)
    with pytest.raises(OutputError, match="no space left"):
        list(train_lora(LoraTrainingConfig(**settings)))
    out = tmp_path / "lora" / "aiko"
    assert not (out / "pytorch_lora_weights.safetensors").exists() and list_loras(tmp_path / "lora") == []
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000001", "checkpoint-000002"]
    monkeypatch.setattr(formats, "write_kohya_lora", real)
    records = list(train_lora(LoraTrainingConfig(**settings, resume=True)))
    assert records[-1].done and list_loras(tmp_path / "lora") == ["aiko"]
    assert {"pytorch_lora_weights.safetensors", "aiko.safetensors", "loss.csv", "training_config.json"} <= {
        p.name for p in out.iterdir()}
    assert _ours(tmp_path) == []
