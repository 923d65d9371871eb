"""Posed generation and character sheets on the tiny model; the CLI; accelerate with 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charstudio.errors import ConfigError, OutputError
from charstudio.pose import load_pose
from charstudio.result import Result
from helpers import pixels as px

FAST = dict(num_inference_steps=2, width=32, height=32)
POSES = ["standing_front", "walking", "jumping"]


def test_a_different_pose_gives_a_different_image(tiny_studio):
    walk = tiny_studio.generate("a knight", seed=5, pose="walking", **FAST)
    walk_again = tiny_studio.generate("a knight", seed=5, pose="walking", **FAST)
    jump = tiny_studio.generate("a knight", seed=5, pose="jumping", **FAST)
    lw, lw2, lj = (r.extras["latents"][0] for r in (walk, walk_again, jump))
    assert (lw == lw2).all()  # same pose, same seed: the same picture
    # The tiny ControlNet's pose path is weak (random weights), so compare the latents, where a
    # pose that was ignored would give exactly zero difference.
    assert (lw - lj).abs().max() > 1e-5
    assert walk.recipe.pose != jump.recipe.pose
    # The recipe rebuilds the posed image on its own.
    assert (px(tiny_studio.run(walk.recipe).image) == px(walk.image)).all()


def test_conditioning_scale_zero_equals_no_controlnet(tiny_studio):
    # (the watermark off: it hashes the recipe, and these recipes differ in their pose)
    plain = tiny_studio.generate("a knight", seed=6, watermark=False, **FAST)
    zero = tiny_studio.generate("a knight", seed=6, pose="jumping", controlnet_conditioning_scale=0.0, watermark=False,
                                **FAST)
    one = tiny_studio.generate("a knight", seed=6, pose="jumping", controlnet_conditioning_scale=1.0, watermark=False,
                               **FAST)
    assert (px(plain.image) == px(zero.image)).all()
    assert (px(plain.image) != px(one.image)).any()


def test_control_image_is_used_as_is_and_must_match_the_output_size(tiny_studio):
    pose = load_pose("waving")
    control = pose.render(32, 32)
    # (the watermark off: a ready control image is not recorded, so the two recipes differ)
    by_pose = tiny_studio.generate("a knight", seed=7, pose=pose, watermark=False, **FAST)
    by_image = tiny_studio.generate("a knight", seed=7, pose=control, watermark=False, **FAST)
    assert (px(by_pose.image) == px(by_image.image)).all()  # the Pose is fitted and rendered the same way
    with pytest.raises(ConfigError, match=r"control_image='48x32' .*output size 32x32"):
        tiny_studio.generate("a knight", seed=7, pose=pose.render(48, 32), **FAST)


def test_sheet_has_n_labelled_cells_and_reproducible_images(tiny_studio):
    sheet = tiny_studio.sheet("aiko", POSES, seed=11, **FAST)
    assert sheet.labels == POSES and len(sheet.images) == len(sheet.recipes) == 3
    assert [r.seed for r in sheet.recipes] == [11, 11, 11]  # same initial noise
    assert all(r.character == "aiko" and r.pose is not None for r in sheet.recipes)
    # An image is exactly what its recipe makes alone.
    assert (px(tiny_studio.run(sheet.recipes[2]).image) == px(sheet.images[2])).all()

    grid = sheet.grid_image
    from charstudio.imaging import LABEL_LINE_HEIGHT, LABEL_MAX_LINES

    pad, (w, h) = 4, sheet.images[0].size
    label_h = grid.size[1] - h - 2 * pad  # labels wrap onto 1-3 lines to stay under their picture
    assert grid.size[0] == 3 * (w + pad) + pad
    notes = LABEL_LINE_HEIGHT if sheet.identity is not None else 0  # the identity scores' line
    assert label_h - notes in {LABEL_LINE_HEIGHT * k + 2 for k in range(1, LABEL_MAX_LINES + 1)}
    g = px(grid)
    for i, image in enumerate(sheet.images):
        x = pad + i * (w + pad)
        assert (g[pad:pad + h, x:x + w] == px(image)).all()  # the cell holds image i
        strip = g[pad + h:pad + h + label_h, x:x + w]
        assert (strip < 128).any()  # and a label is written under it

    different = tiny_studio.sheet("aiko", POSES[:2], seed=11, same_noise=False, **FAST)
    assert [r.seed for r in different.recipes] == [11, 12]


def test_sheet_save_writes_images_with_recipes_and_never_overwrites(tiny_studio, tmp_path):
    sheet = tiny_studio.sheet("a knight", POSES[:2], seed=3, **FAST)
    paths = sheet.save(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["00-standing-front.png", "01-walking.png", "grid.png", "sheet.json"]
    again = Result.from_png(tmp_path / "01-walking.png")
    assert again.recipe == sheet.recipes[1]
    data = json.loads((tmp_path / "sheet.json").read_text())
    assert data["labels"] == POSES[:2] and data["settings"]["seed"] == 3
    with pytest.raises(OutputError, match="already exists"):
        sheet.save(tmp_path)


def test_sheet_overwrite_with_fewer_poses_leaves_only_the_new_sheet(tiny_studio, tmp_path, capsys):
    from charstudio.cli import main

    common = ["sheet", "a knight", "--model", "tiny", "--steps", "2", "--width", "32", "--height", "32",
              "--seed", "3", "--out", str(tmp_path)]
    assert main(common + ["--poses", ",".join(POSES)]) == 0
    (tmp_path / "my-notes.png").write_bytes(b"not part of any sheet")
    assert main(common + ["--poses", "kneeling", "--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00-kneeling.png", "grid.png", "my-notes.png",
                                                            "sheet.json"]
    assert json.loads((tmp_path / "sheet.json").read_text())["files"] == ["00-kneeling.png"]
    # A sheet.json that lists paths outside its folder deletes nothing there.
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(b"keep")
    data = json.loads((tmp_path / "sheet.json").read_text())
    data["files"] = [str(outside), "../" + outside.name]
    (tmp_path / "sheet.json").write_text(json.dumps(data))
    assert main(common + ["--poses", "kneeling", "--overwrite"]) == 0
    assert outside.read_bytes() == b"keep"


def test_sheet_bad_input(tiny_studio):
    with pytest.raises(ConfigError, match="poses=\\[\\]"):
        tiny_studio.sheet("a knight", [], **FAST)
    with pytest.raises(ConfigError, match="pose='sitting down' .*sitting"):
        tiny_studio.sheet("a knight", ["sitting down"], **FAST)
    with pytest.raises(ConfigError, match="reference_strength=1.5"):
        tiny_studio.sheet("a knight", POSES, reference_strength=1.5, **FAST)


def test_cli_poses_lists_the_users_poses_two_people_and_broken_files_too(tmp_path, capsys, monkeypatch):
    """The pose editor saves two-person poses into the user's library; the listing shows them,
    and one broken file there is named, not a crash that hides the rest."""
    from charstudio.cli import main
    from charstudio.pose import save_pose
    from charstudio.pose.compose import side_by_side

    monkeypatch.setenv("CHARSTUDIO_POSE_DIR", str(tmp_path / "poses"))
    save_pose(side_by_side("standing_front", "waving", width=128, height=64), "duo")
    (tmp_path / "poses" / "broken.json").write_text("{not json")
    assert main(["poses"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "2 people" in lines["duo"] and lines["duo"].endswith("(yours)")
    assert "unreadable" in lines["broken"] and "1 person" in lines["standing_front"]
    assert "(yours)" not in lines["standing_front"]


def test_cli_poses_and_pose_render(tmp_path, capsys):
    from charstudio.cli import main

    assert main(["poses"]) == 0
    listed = capsys.readouterr().out
    assert "standing_front" in listed and len(listed.strip().splitlines()) >= 16
    out = tmp_path / "walk.png"
    assert main(["pose", "render", "walking", "--out", str(out), "--width", "128"]) == 0
    from PIL import Image

    assert (px(Image.open(out)) == px(load_pose("walking").render(128))).all()
    assert main(["pose", "render", "walking", "--out", str(out)]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["pose", "render", "no_such_pose", "--out", str(tmp_path / "x.png")]) == 2
    assert "standing_front" in capsys.readouterr().err
    # A typo in --poses fails before any model is loaded, and nothing is written.
    assert main(["sheet", "aiko", "--poses", "walking,sittin", "--out", str(tmp_path / "sheet")]) == 2
    assert "did you mean sitting" in capsys.readouterr().err
    assert not (tmp_path / "sheet").exists()


@pytest.mark.slow
def test_accelerate_two_processes_match_one(tiny_studio, tmp_path):
    """`accelerate launch` with 2 CPU processes splits the sheet and gathers it; the images equal
    an in-process run. Each launched process uses one thread, and so does the reference run,
    because CPU kernels sum in a thread-count dependent order. No --seed, and a prompt has none:
    the seed is drawn once and shared, so every pose has the same noise and the same anchor."""
    import torch

    script = tmp_path / "cli.py"
    script.write_text("import sys\nfrom charstudio.cli import main\nsys.exit(main())\n")
    out = tmp_path / "sheet"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # --multi_gpu picks accelerate's torchrun launcher; on a machine without CUDA the processes
    # run on the CPU over gloo (`--cpu` alone starts a single process without MPI).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
           "sheet", "a knight in silver armour", "--model", "tiny", "--poses", ",".join(POSES), "--reference-strength", "0.5",
           "--steps", "2", "--width", "32", "--height", "32", "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sheet = json.loads((out / "sheet.json").read_text())
    assert sheet["settings"]["processes"] == 2
    seed = sheet["settings"]["seed"]
    assert [r["seed"] for r in sheet["recipes"]] == [seed] * len(POSES)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = tiny_studio.sheet("a knight in silver armour", POSES, seed=seed, reference_strength=0.5, guidance_scale=7.0, **FAST)
    finally:
        torch.set_num_threads(threads)
    from PIL import Image

    for i, (name, image) in enumerate(zip(POSES, single.images)):
        saved = Image.open(out / f"{i:02d}-{name.replace('_', '-')}.png")
        # Each process batches its own share of the poses: batched kernels round within one level.
        assert np.abs(px(saved) - px(image)).max() <= 1, name
