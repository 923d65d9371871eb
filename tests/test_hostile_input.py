"""Hostile input, one table per class (issue "Hostile input"): each bad input gets one line that
names the flag, field or file, no traceback, and leaves nothing on disk.

The CLI cases run `charstudio.cli.main` in-process, exactly as the `charstudio` command does, and
read what it prints. Class 0 (data loss) and the LoRA header cases of class 5 have their own
tests in test_training.py and test_lora.py; class 8 (empty --out folders) in test_cli.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from charstudio.errors import CharstudioError, ConfigError, InputFileError, OutputError

pytestmark = pytest.mark.usefixtures("one_thread")

PACKAGE = Path(__import__("charstudio").__file__).resolve().parent


# --------------------------------------------------------------------------------------------
# the bad files, made once
# --------------------------------------------------------------------------------------------
def _png_with_text(path: Path, **chunks: str) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, pnginfo=info)
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """Every hostile file the tables use, in one folder outside the test's own tmp_path."""
    from PIL import Image

    d = tmp_path_factory.mktemp("bad")
    files: dict[str, Path] = {}
    garbage = bytes(range(256))[::-1] * 8  # starts with 0xff: not UTF-8, not an image
    for name in ("card.yaml", "pose.json", "junk.png", "junk.safetensors", "caption.txt"):
        (d / name).write_bytes(garbage)
        files[name] = d / name
    a1111 = "a red fox\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: {size}"
    files["size64.png"] = _png_with_text(d / "size64.png", parameters=a1111.format(seed=1, size="64"))
    files["seed_abc.png"] = _png_with_text(d / "seed_abc.png", parameters=a1111.format(seed="abc", size="64x64"))
    files["recipe_not_json.png"] = _png_with_text(d / "recipe_not_json.png", charstudio="{not json")
    files["no_recipe.png"] = _png_with_text(d / "no_recipe.png")
    whole = (d / "no_recipe.png").read_bytes()
    (d / "truncated.png").write_bytes(whole[: len(whole) // 2])
    files["truncated.png"] = d / "truncated.png"
    # A decompression bomb: 400 megapixels that compress to a few kB, over PIL's 179 MP limit.
    Image.new("1", (20_000, 20_000)).save(d / "bomb.png")
    files["bomb.png"] = d / "bomb.png"
    empty_pose = {"people": [{"pose_keypoints_2d": [0.0] * 54}], "canvas_width": 64, "canvas_height": 64}
    (d / "empty_pose.json").write_text(json.dumps(empty_pose))
    files["empty_pose.json"] = d / "empty_pose.json"
    huge_pose = {"people": [{"pose_keypoints_2d": [10.0, 10.0, 1.0] * 18}], "canvas_width": 100_000,
                 "canvas_height": 100_000}
    (d / "huge_canvas.json").write_text(json.dumps(huge_pose))
    files["huge_canvas.json"] = d / "huge_canvas.json"
    (d / "a_file").write_text("not a folder")
    files["a_file"] = d / "a_file"
    return files


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def refused(argv: list[str], capsys, watch: Path, *fragments: str) -> str:
    """Run the CLI; assert exit 2, one error line naming every fragment, no traceback, and no
    file or folder added, changed or removed under ``watch``."""
    from charstudio.cli import main

    before = _tree(watch)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("warning:", "note:"))
             and not TQDM.search(line)]  # loading progress bars are not messages
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("charstudio: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert _tree(watch) == before, "the refused command changed files on disk"
    return lines[0]


TQDM = re.compile(r"\|\s*\d+/\d+ \[")
@pytest.fixture(autouse=True)
def _fresh_log_handlers():
    """Log handlers bind the stderr of the test that made them (the CLI's basicConfig, diffusers'
    own handler); pytest closes that stream afterwards. Point them at this test's stderr, and
    leave the root logger as it was found."""
    import logging
    import sys

    root = logging.getLogger()
    handlers = list(root.handlers)
    for logger in [root, *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr  # setStream would flush the closed one
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)


GEN = ["generate", "a cat", "--model", "tiny", "--steps", "1", "--width", "32", "--height", "32"]


# --------------------------------------------------------------------------------------------
# class 1: OS errors name the flag and the path the user gave, before the model loads
# --------------------------------------------------------------------------------------------
CLASS_1 = {
    "generate --out is a file": (lambda b, t: GEN + ["--out", str(b["a_file"])], ["--out=", "is a file"]),
    "generate --out under a file": (lambda b, t: GEN + ["--out", str(b["a_file"] / "sub")],
                                    ["--out=", "which is a file"]),
    "sheet --out is a file": (lambda b, t: ["sheet", "a cat", "--poses", "walking", "--model", "tiny", "--steps", "1",
                                            "--out", str(b["a_file"])], ["--out=", "is a file"]),
    "generate --out inside the package": (lambda b, t: GEN + ["--out", str(PACKAGE / "data" / "outputs")],
                                          ["--out=", "inside the installed charstudio package"]),
    "pose render --out not a PNG": (lambda b, t: ["pose", "render", "walking", "--out", str(t / "x.jpg")],
                                    ["--out=", "PNG"]),
    "pose render --out under a file": (lambda b, t: ["pose", "render", "walking", "--out",
                                                     str(b["a_file"] / "x.png")], ["--out", "is a file"]),
    "lora-convert to a missing folder": (lambda b, t: ["lora-convert", "--to", "diffusers", str(t / "src.safetensors"),
                                                       str(t / "missing" / "out.safetensors")],
                                         ["DST=", "does not exist"]),
    "lora-convert to a .ckpt name": (lambda b, t: ["lora-convert", "--to", "kohya", str(t / "src.safetensors"),
                                                    str(t / "out.ckpt")],
                                     ["dst=", "safetensors", "out.safetensors"]),
    "train-lora --output-dir is a file": (lambda b, t: ["train-lora", str(t / "data"), "--name", "x", "--model",
                                                        "tiny", "--output-dir", str(b["a_file"])],
                                          ["--output-dir=", "is a file"]),
    "train-lora --output-dir inside the package": (lambda b, t: ["train-lora", str(t / "data"), "--name", "x",
                                                                 "--model", "tiny", "--output-dir",
                                                                 str(PACKAGE / "data" / "my_loras")],
                                                   ["--output-dir=", "inside the installed charstudio package"]),
}


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A LoRA file to convert and a small dataset, as the class-1 cases expect them."""
    from PIL import Image
    from safetensors.torch import save_file

    import torch

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)},
              str(tmp_path / "src.safetensors"))
    (tmp_path / "data").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(tmp_path / "data" / f"img{i}.png")
    return tmp_path


@pytest.mark.parametrize("case", list(CLASS_1))
def test_class_1_os_errors_name_the_flag_and_the_path(case, bad, workdir, capsys):
    argv, fragments = CLASS_1[case]
    refused(argv(bad, workdir), capsys, workdir, *fragments)
    assert not (PACKAGE / "data" / "outputs").exists() and not (PACKAGE / "data" / "my_loras").exists()


def test_class_1_a_full_disk_mid_save_names_the_flag(tmp_path, capsys, monkeypatch):
    """The disk fills up after the picture was drawn: the line names --out and the file, not errno."""
    import errno

    from PIL import Image

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    line = refused(GEN + ["--out", str(tmp_path / "out")], capsys, tmp_path, "--out=", "no space left on the device")
    assert ".tmp" not in line


# --------------------------------------------------------------------------------------------
# class 2: readers name the file and the field, all with one error type
# --------------------------------------------------------------------------------------------
CLASS_2 = {
    "binary card": (lambda b: GEN[:1] + [str(b["card.yaml"])] + GEN[2:] + ["--out", "{out}"], ["card.yaml",
                                                                                             "not UTF-8"]),
    "binary pose file": (lambda b: GEN + ["--pose", str(b["pose.json"]), "--out", "{out}"], ["pose.json",
                                                                                            "not UTF-8"]),
    "A1111 Size: 64": (lambda b: ["info", str(b["size64.png"])], ["size64.png", "'Size'", "WIDTHxHEIGHT"]),
    "A1111 Seed: abc": (lambda b: ["info", str(b["seed_abc.png"])], ["seed_abc.png", "'Seed'"]),
    "recipe chunk not JSON": (lambda b: ["info", str(b["recipe_not_json.png"])], ["recipe_not_json.png",
                                                                                 "not valid JSON"]),
    "PNG without a recipe": (lambda b: ["info", str(b["no_recipe.png"])], ["no_recipe.png", "carries no recipe"]),
    "not a picture": (lambda b: ["info", str(b["junk.png"])], ["junk.png", "cannot be read"]),
    "truncated picture": (lambda b: ["info", str(b["truncated.png"])], ["truncated.png", "cannot be read"]),
    "decompression bomb": (lambda b: ["info", str(b["bomb.png"])], ["bomb.png", "too large to decode safely"]),
    "corrupt reference picture": (lambda b: ["sheet", "a cat", "--poses", "walking", "--model", "tiny",
                                             "--reference-image", str(b["junk.png"]), "--out", "{out}"],
                                  ["--reference-image", "junk.png", "cannot be read"]),
    "corrupt IP-Adapter picture": (lambda b: ["sheet", "a cat", "--poses", "walking", "--model", "tiny",
                                              "--ip-adapter-image", str(b["truncated.png"]), "--out", "{out}"],
                                   ["--ip-adapter-image", "truncated.png", "cannot be read"]),
    "garbage LoRA file": (lambda b: ["lora-info", str(b["junk.safetensors"])], ["junk.safetensors",
                                                                               "cannot be read as a safetensors"]),
    "garbage model file": (lambda b: GEN[:2] + ["--model", str(b["junk.safetensors"]), "--out", "{out}"],
                           ["junk.safetensors", "not a readable .safetensors"]),
}


@pytest.mark.parametrize("case", list(CLASS_2))
def test_class_2_readers_name_the_file_and_the_field(case, bad, tmp_path, capsys):
    argv, fragments = CLASS_2[case]
    argv = [a.replace("{out}", str(tmp_path / "out")) for a in argv(bad)]
    refused(argv, capsys, tmp_path, *fragments)


@pytest.mark.parametrize("reader,name", [
    (lambda b: __import__("charstudio.character", fromlist=["x"]).load_character(b["card.yaml"]), "card.yaml"),
    (lambda b: __import__("charstudio.pose", fromlist=["x"]).load_pose(b["pose.json"]), "pose.json"),
    (lambda b: __import__("charstudio").Result.from_png(b["size64.png"]), "size64.png"),
    (lambda b: __import__("charstudio").Result.from_png(b["junk.png"]), "junk.png"),
    (lambda b: __import__("charstudio").Result.from_png(b["no_recipe.png"]), "no_recipe.png"),
    (lambda b: __import__("charstudio.io_utils", fromlist=["x"]).open_image(b["bomb.png"]), "bomb.png"),
    (lambda b: __import__("charstudio.io_utils", fromlist=["x"]).open_image(b["junk.png"].read_bytes(), "picture",
                                                                             "upload.png"), "upload.png"),
    (lambda b: __import__("charstudio.pose", fromlist=["x"]).Pose.from_image(b["truncated.png"]), "truncated.png"),
])
def test_class_2_every_reader_raises_one_error_type(reader, name, bad):
    with pytest.raises(InputFileError) as err:
        reader(bad)
    assert name in str(err.value) and "\n" not in str(err.value) and "BytesIO" not in str(err.value)


# --------------------------------------------------------------------------------------------
# class 3: wrong Python types name the argument (more in test_bad_input.py)
# --------------------------------------------------------------------------------------------
CLASS_3 = {
    "prompt as a number": (lambda s: s.generate(123), "character_or_prompt"),
    "prompt as a list": (lambda s: s.generate(["a", "b"]), "character_or_prompt"),
    "seed as text": (lambda s: s.generate("a cat", seed="5"), "seed"),
    "steps as a fraction": (lambda s: s.generate("a cat", num_inference_steps=2.5), "num_inference_steps"),
    "guidance NaN": (lambda s: s.generate("a cat", guidance_scale=float("nan")), "guidance_scale"),
    "width as text": (lambda s: s.generate("a cat", width="64"), "width"),
    "no images": (lambda s: s.generate("a cat", num_images=0), "num_images"),
    "frames as a fraction": (lambda s: s.interpolate("a cat", "a dog", frames=3.7), "frames"),
    "frames as text": (lambda s: s.interpolate("a cat", "a dog", frames="8"), "frames"),
    "interpolate end as a tuple": (lambda s: s.interpolate(("a girl", 1), ("a boy", 2)), "a"),
    "strength above 1": (lambda s: s.from_photo("a cat", __import__("PIL.Image").Image.new("RGB", (64, 64)),
                                                strength=1.5, pose=None), "strength"),
}


@pytest.mark.parametrize("case", list(CLASS_3))
def test_class_3_wrong_python_types_name_the_argument(case, tiny_studio):
    call, field = CLASS_3[case]
    with pytest.raises(ConfigError) as err:
        call(tiny_studio)
    assert err.value.field == field and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# class 4: sizes have limits per model, with an opt-in
# --------------------------------------------------------------------------------------------
CLASS_4 = {
    "mini at 8192x8192": (["generate", "rin", "--width", "8192", "--height", "8192"],
                          ["width=8192", "trained at 64x64", "--allow-large"]),
    "mini at 256 wide": (["generate", "rin", "--width", "256"], ["width=256", "up to 128 px"]),
    "tiny at 2048x2048": (["generate", "a cat", "--model", "tiny", "--width", "2048", "--height", "2048"],
                          ["width=2048", "trained at 128x128"]),
    "sheet at 4096 tall": (["sheet", "rin", "--poses", "walking", "--height", "4096"], ["height=4096",
                                                                                      "--allow-large"]),
    "pose render 100000 wide": (["pose", "render", "walking", "--width", "100000", "--out", "{out}/p.png"],
                                ["width=100000", "8192"]),
    "pose file with a 100000 px canvas": (["pose", "render", "{huge_canvas}", "--out", "{out}/p.png"],
                                          ["width=100000", "8192"]),
    "train at 4096": (["train-lora", "{data}", "--name", "big", "--model", "tiny", "--resolution", "4096",
                       "--output-dir", "{out}"], ["resolution=4096", "trained at 128x128"]),
}


@pytest.mark.parametrize("case", list(CLASS_4))
def test_class_4_sizes_are_bounded_per_model(case, bad, workdir, capsys):
    argv, fragments = CLASS_4[case]
    subs = {"{out}": str(workdir / "out"), "{data}": str(workdir / "data"), "{huge_canvas}": str(bad["huge_canvas.json"])}
    argv = [subs.get(a, a) if not a.startswith("{out}") else a.replace("{out}", subs["{out}"]) for a in argv]
    if argv[0] in ("generate", "sheet"):
        argv += ["--steps", "1", "--out", str(workdir / "out")]
    refused(argv, capsys, workdir, *fragments)


def test_class_4_allow_large_opts_in(tmp_path, capsys):
    from charstudio import Result
    from charstudio.cli import main

    assert main(["generate", "a cat", "--model", "tiny", "--steps", "1", "--width", "264", "--height", "32",
                 "--allow-large", "--out", str(tmp_path)]) == 0
    assert Result.from_png(capsys.readouterr().out.split()[0]).image.size == (264, 32)


def test_class_4_frames_and_memory(tiny_studio):
    from charstudio.limits import MAX_FRAMES, check_picture_size

    for call in (lambda: tiny_studio.interpolate("a cat", "a dog", frames=100_000),
                 lambda: tiny_studio.pose_animation("a cat", "walking", "waving", frames=MAX_FRAMES + 1)):
        with pytest.raises(ConfigError, match=f"at most {MAX_FRAMES} frames"):
            call()
    # Even with the opt-in, a decode that cannot fit in the free memory is refused up front.
    with pytest.raises(ConfigError, match=r"needs about 12\.0 GiB and 4\.0 GiB is free"):
        check_picture_size(4096, 2048, 512, allow_large=True, memory_bytes=4 * 2**30)
    check_picture_size(1024, 1024, 512, memory_bytes=4 * 2**30)  # SD 1.5 at 2x: fine


# --------------------------------------------------------------------------------------------
# class 5: LoRA headers from the CLI (the table of header cases is in test_lora.py)
# --------------------------------------------------------------------------------------------
def test_class_5_a_lying_lora_header_is_one_line_in_the_cli(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from charstudio.lora import ADAPTER_METADATA_KEY

    header = {"unet.r": 100000, "unet.lora_alpha": 4, "unet.target_modules": ["to_q"]}
    tensors = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4)}
    path = tmp_path / "liar.safetensors"
    save_file(tensors, str(path), metadata={ADAPTER_METADATA_KEY: json.dumps(header), "format": "pt"})
    line = refused(GEN + ["--lora", str(path), "--out", str(tmp_path / "out")], capsys, tmp_path,
                   "liar.safetensors", "rank 100000", "tensors have rank 4")
    assert len(line) < 300


# --------------------------------------------------------------------------------------------
# class 6: pickles
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pickled_folder(tmp_path_factory) -> Path:
    """The tiny model saved as a diffusers folder with pickled (.bin) weights."""
    from diffusers import StableDiffusionPipeline

    from charstudio.models.tiny import build_tiny_components

    c = build_tiny_components()
    folder = tmp_path_factory.mktemp("pickled") / "model"
    StableDiffusionPipeline(**{k: c[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(folder, safe_serialization=False)
    # transformers writes safetensors whatever it is asked; diffusers' UNet and VAE obey
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file() and not list(folder.glob("unet/*.safetensors"))
    return folder


class _Payload:
    """Unpickling this would create ``marker``: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_class_6_a_pickled_diffusers_folder_is_refused_in_one_line(pickled_folder, tmp_path, capsys):
    refused(GEN[:2] + ["--model", str(pickled_folder), "--out", str(tmp_path / "out")], capsys, tmp_path,
            "model=", "diffusion_pytorch_model.bin", "pickled weights refused", "--allow-pickle")


def test_class_6_a_malicious_bin_never_runs_even_when_opted_in(pickled_folder, tmp_path, capsys):
    import shutil

    import torch

    folder = tmp_path / "evil"
    shutil.copytree(pickled_folder, folder)
    marker = tmp_path / "pwned"
    torch.save({"conv_in.weight": _Payload(str(marker))}, folder / "unet" / "diffusion_pytorch_model.bin")
    refused(GEN[:2] + ["--model", str(folder), "--allow-pickle", "--out", str(tmp_path / "out")], capsys,
            tmp_path / "evil", "model=", "pickled weights", "may run code")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_class_6_a_trusted_pickled_folder_loads_with_the_opt_in(pickled_folder, tmp_path, capsys):
    from charstudio.cli import main

    assert main(GEN[:2] + ["--model", str(pickled_folder), "--allow-pickle", "--steps", "1", "--width", "32",
                           "--height", "32", "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


# --------------------------------------------------------------------------------------------
# class 7: nothing bad is accepted silently
# --------------------------------------------------------------------------------------------
def test_class_7_an_empty_pose_is_refused(bad, tmp_path, capsys, tiny_studio):
    refused(GEN + ["--pose", str(bad["empty_pose.json"]), "--out", str(tmp_path / "out")], capsys, tmp_path,
            "pose=", "no keypoints")
    refused(["pose", "render", str(bad["empty_pose.json"]), "--out", str(tmp_path / "p.png")], capsys, tmp_path,
            "no keypoints")
    from charstudio.pose import load_pose

    with pytest.raises(ConfigError, match="no keypoints"):
        tiny_studio.generate("a cat", pose=load_pose(bad["empty_pose.json"]), num_inference_steps=1)


def test_class_7_binary_captions_and_bombs_are_skipped_and_counted(bad, tmp_path):
    import shutil

    from PIL import Image

    from charstudio.training import scan_dataset

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (60 * i, 90, 30)).save(data / f"img{i}.png")
    shutil.copy(bad["caption.txt"], data / "img1.txt")  # random bytes as img1's caption
    shutil.copy(bad["bomb.png"], data / "bomb.png")
    report = scan_dataset(data, instance_prompt="a picture of sks person", min_size=32)
    assert [e.path.name for e in report.examples] == ["img0.png", "img2.png"]
    reasons = dict((p.name, why) for p, why in report.skipped)
    assert set(reasons) == {"bomb.png", "img1.png"}
    assert "too large to decode safely" in reasons["bomb.png"] and "not UTF-8" in reasons["img1.png"]


def test_class_7_resume_without_a_checkpoint_is_refused(tmp_path, workdir):
    from charstudio.training import LoraTrainingConfig, train_lora

    cfg = LoraTrainingConfig(data_dir=str(workdir / "data"), name="fresh", model="tiny",
                             output_dir=str(tmp_path / "lora"), max_train_steps=2, resume=True, resolution=64,
                             num_validation_images=0)
    with pytest.raises(OutputError, match="has no checkpoint to resume from"):
        list(train_lora(cfg))
    assert not (tmp_path / "lora" / "fresh").exists()


def test_class_7_the_train_apps_resume_without_a_checkpoint_shows_the_error_and_trains_nothing(
        fresh_studio, workdir, tmp_path):
    pytest.importorskip("ipywidgets")
    from charstudio.ui.common import Gallery
    from charstudio.ui.train import TrainApp

    app = TrainApp(fresh_studio, data_dir=str(workdir / "data"), steps=2, output_dir=str(tmp_path / "lora"),
                   gallery=Gallery())
    app.resolution.value = 64
    app.resume_button.click()
    assert app.wait(120)
    assert app.status.level == "error" and "no checkpoint to resume from" in app.status.text, app.status.text
    assert "\n" not in app.status.text and not app.history
    assert app.runner.jobs_started == 1 and not (tmp_path / "lora" / app.name.value).exists()


def test_class_7_a_restore_keeps_its_warning(tiny_studio, tmp_path):
    pytest.importorskip("ipywidgets")
    from charstudio.ui.explore import ExploreApp

    app = ExploreApp(tiny_studio, steps=1, output_dir=str(tmp_path / "out"))
    recipe = tiny_studio.make_config("a cat", seed=3, width=72, height=64)  # 72 is not in the size list
    item = app.gallery.add(tiny_studio.run(recipe).image, recipe, "odd size")
    app.restore(item)
    assert app.status.level == "warn" and "72x64" in app.status.text, app.status.text
    assert "will not make the same picture" in app.status.text


def test_class_7_the_explore_apps_bad_uploads_show_one_line_and_run_nothing(tiny_studio, tmp_path, bad):
    pytest.importorskip("ipywidgets")
    from charstudio.ui.explore import ExploreApp

    app = ExploreApp(tiny_studio, steps=1, output_dir=str(tmp_path / "out"))
    app.load_pose_file("pose.json", bad["pose.json"].read_bytes())
    assert app.status.level == "error" and "pose.json" in app.status.text
    app.load_pose_file("photo.png", bad["junk.png"].read_bytes())  # goes to the detector's thread
    assert app.wait(60)
    assert app.status.level == "error" and "photo.png" in app.status.text and "BytesIO" not in app.status.text
    assert app.open_png("bomb.png", bad["bomb.png"].read_bytes()) is None
    assert app.status.level == "error" and "too large to decode safely" in app.status.text
    assert len(app.gallery) == 0 and not (tmp_path / "out").exists()


def test_every_refusal_is_a_charstudio_error():
    """The CLI shows our errors without a type name or --debug hint; these are the types it knows."""
    from charstudio.errors import CardError, FileFieldError, is_user_error

    for exc in (InputFileError("x"), CardError("x"), FileFieldError("f", 1, "y"), OutputError("x"), ConfigError("f", 1, "y")):
        assert isinstance(exc, CharstudioError) and is_user_error(exc)
    assert isinstance(FileFieldError("f", 1, "y"), InputFileError)
