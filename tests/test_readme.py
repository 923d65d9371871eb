"""The README's examples run as written and do what the sentence around them says.

Python examples run on the README's own model (`mini`, offline; `"sd15"` becomes `"tiny"` where a
GPU section loads it). Shell examples run through `charstudio.cli.main` in a temporary folder, each
line as the README prints it except for the substitutions `run_line` is given, which are asserted
to be in the line (so a changed README fails here rather than running something else). What is
substituted, and why:
- `--model sd15` / an `illustrious_v1.safetensors` file -> `tiny` / `tiny-sdxl`: no hub, no GPU here;
  with `tiny-sdxl`, the SDXL sheet's 832x1216 becomes 128x192 (tiny's size limit is 256).
- `--steps 300` (the mini LoRA recipe) and the default 500 (the SD 1.5 / SDXL recipes) -> 2 steps:
  the recipe runs, the minutes of training do not (tests/test_mini.py measures the trained LoRA).
- `my_aiko_pictures/` -> pictures written by `mini.world.write_lora_dataset`, captions removed.
- each CLI line loading `mini` anew -> one load for the module (`one_load`; 5 s of CPU a line).
- placeholders (`IMAGE.png`, `DIR`, `NAME`) -> a picture drawn here, a temporary folder, a pose name;
  `[optional flags]` are left out.
Not run here: `pip install` and `python -m venv` (this environment is that install), the test
commands themselves, `jupyter lab` (tests/test_browser.py opens the notebooks),
`tools/make_notebooks.py` (it rewrites notebooks/), the 98-minute `python -m charstudio.mini.train`
run (its `--help` is checked for every flag the README names), the `--resume` line (training's
stop-and-resume is tests/test_training.py's) and the `inpaint` line, whose mask and prompt are
alternatives (the Python example inpaints).
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README from the header `title` ("## Using it", "### Python") to the next header of its
    level or above (lines starting with '#' inside code blocks are not headers)."""
    out, inside, fenced = [], False, False
    level = len(title.split(" ")[0])
    for line in TEXT.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        header = not fenced and re.match(r"(#+) ", line)
        if inside and header and len(header.group(1)) <= level:
            break
        inside = inside or line.rstrip("\n") == title
        if inside:
            out.append(line)
    assert out, f"no README section {title!r}"
    return "".join(out)


def blocks(text: str, lang: str) -> list[str]:
    """The code blocks of the text whose opening fence names `lang` ("" for a bare fence)."""
    found, current, opened = [], None, None
    for line in text.splitlines(keepends=True):
        if line.startswith("```") and current is None:
            current, opened = [], line[3:].strip()
        elif line.startswith("```"):
            if opened == lang:
                found.append("".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return found


def lines(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def line_starting(text: str, start: str, *, whole: bool = False) -> str:
    """The one line of the text's shell blocks that starts with `start` (is `start`, when `whole`)."""
    found = [line for block in blocks(text, "bash") for line in lines(block)
             if (line == start if whole else line.startswith(start))]
    assert len(found) == 1, f"expected one README line starting {start!r}, found {found}"
    return found[0]


def run_line(line: str, capsys, subs: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run one `charstudio ...` line through the CLI, after the given (asserted) substitutions."""
    from charstudio.cli import main

    for old, new in (subs or {}).items():
        assert old in line, f"the README line no longer has {old!r}: {line}"
        line = line.replace(old, new)
    argv = shlex.split(line, comments=True)
    assert argv[0] == "charstudio", line
    capsys.readouterr()
    code = main(argv[1:])
    out, err = capsys.readouterr()
    return code, out, err


def mean_difference(images) -> float:
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float64) for im in images]
    return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(arrays, 2)]))


def printed_pngs(out: str) -> list[Path]:
    return [Path(p) for p in out.split() if p.endswith(".png")]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHARSTUDIO_PROMPTS", raising=False)
    return tmp_path


_STUDIOS: dict = {}


@pytest.fixture
def one_load(monkeypatch):
    """The CLI lines load `mini` once for the module, not once a line (5 s of CPU each): a command
    asking for the same model with the same settings gets the loaded studio, its LoRAs unloaded."""
    from charstudio import Studio

    load = Studio.from_pretrained

    def cached(cls, model="mini", **kwargs):
        key = (model, tuple(sorted(kwargs.items())))
        if key not in _STUDIOS:
            _STUDIOS[key] = load(model, **kwargs)
        studio = _STUDIOS[key]
        if studio.active_loras:
            studio.unload_loras()
        return studio

    monkeypatch.setattr(Studio, "from_pretrained", classmethod(cached))


# --- Quickstart -----------------------------------------------------------------------------------

def test_quickstart_sheet(in_tmp, capsys, one_load):
    from PIL import Image

    from charstudio.imaging import LABEL_LINE_HEIGHT
    from charstudio.result import Result

    text = section("## Quickstart")
    install = blocks(text, "bash")[0]
    line = [part.strip() for part in install.split("&&") if part.strip().startswith("charstudio sheet")][0]
    code, out, err = run_line(line, capsys)
    assert code == 0, err
    # "one PNG per pose into outputs/ (each with its recipe inside), the labelled grid grid.png and sheet.json"
    poses = ["standing_front", "walking", "waving", "running"]
    pngs = sorted(p.name for p in (in_tmp / "outputs").glob("[0-9]*.png"))
    assert pngs == ["00-standing-front.png", "01-walking.png", "02-waving.png", "03-running.png"]
    recipes = [Result.from_png(in_tmp / "outputs" / name).recipe for name in pngs]
    assert [r.character for r in recipes] == ["rin"] * 4 and all(r.pose is not None for r in recipes)
    # "share their starting noise and, through --reference-strength, the first picture's look"
    assert len({r.seed for r in recipes}) == 1
    sheet = json.loads((in_tmp / "outputs" / "sheet.json").read_text())
    assert "0.5" in json.dumps(sheet) and "reference" in json.dumps(sheet)
    # The grid's labels each fit their 64 px cell on one line (#40: "standing_" / "front" wrapped),
    # with each picture's identity score on a second line.
    grid = Image.open(in_tmp / "outputs" / "grid.png")
    pad, cell = 4, 64
    assert grid.size == (4 * (cell + pad) + pad, cell + 2 * LABEL_LINE_HEIGHT + 2 + 2 * pad)
    assert sheet["identity"]["scorer"] == "mini" and len(sheet["identity"]["scores"]) == 4
    ink = (np.asarray(grid.convert("RGB")) < 128).all(axis=2)[pad + cell:]
    for i, pose in enumerate(poses):
        x = pad + i * (cell + pad)
        used = np.flatnonzero(ink[:, x:x + cell + pad].any(axis=0))
        assert used.size and used.max() < cell, f"the label {pose!r} runs past its cell"
    # "Run it again with --overwrite (or another --out): a sheet is never overwritten silently."
    code, out, err = run_line(line, capsys)
    assert code == 2 and "--overwrite" in err  # (that --overwrite then replaces it: tests/test_sheet.py)


# --- The built-in models ------------------------------------------------------------------------

def test_mini_prompt_and_n_examples(in_tmp, capsys, one_load):
    text = section("## The built-in models: `mini` and `tiny`")
    from charstudio.result import Result

    # The prompt written in mini's words: drawn, and no "never seen the words" note.
    line = re.search(r"`(charstudio generate \"a boy with spiky green hair[^`]*)`", text).group(1)
    code, out, err = run_line(line, capsys)
    assert code == 0 and len(printed_pngs(out)) == 1 and "never seen" not in err
    # -n: the three lines and the levels apart the README gives for each.
    n_block = next(b for b in blocks(text, "bash") if "-n 4" in b)
    stated = []
    for line in lines(n_block):
        code, out, err = run_line(line, capsys)
        assert code == 0, err
        results = [Result.from_png(p) for p in printed_pngs(out)]
        assert [r.recipe.seed for r in results] == [3, 4, 5, 6]  # "draws seeds 3, 4, 5 and 6"
        said = float(re.search(r"([0-9.]+) levels apart", line).group(1))
        measured = mean_difference([r.image for r in results])
        assert abs(measured - said) <= max(1.5, 0.1 * said), (line, measured)
        # "The command says so when pictures come out under 10 levels apart."
        assert ("differ by only" in err) == (measured < 10), err
        stated.append(measured)
    assert stated[0] < 10 < stated[1] and stated[0] < 10 < stated[2]


def test_mini_train_help_lists_the_flags_the_readme_names(capsys):
    from charstudio.mini.train import main

    text = section("### Rebuilding `mini`")
    named = set(re.findall(r"(--[a-z][a-z-]+)", text))
    assert {"--work", "--out", "--init-from", "--snr-shift", "--unet-steps", "--vae-stroke-share"} <= named
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert not [flag for flag in named if flag not in help_text]


# --- Real checkpoints on a GPU (on tiny / tiny-sdxl) ----------------------------------------------

def test_gpu_section_examples_on_tiny(in_tmp, capsys):
    text = section("## Real checkpoints on a GPU")
    line = line_starting(text, "charstudio sheet aiko")
    code, out, err = run_line(line, capsys, {"~/models/illustrious_v1.safetensors": "tiny-sdxl",
                                             "--width 832 --height 1216": "--width 128 --height 192",
                                             "--poses": "--out sheets/aiko --poses"})
    assert code == 0, err
    assert len(list((in_tmp / "sheets" / "aiko").glob("0*.png"))) == 2
    namespace: dict = {}
    for block in blocks(text, "python"):
        exec(compile(block.replace('"sd15"', '"tiny"'), "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result.images) == 4 and [r.seed for r in result.recipes] == [7, 8, 9, 10]
    assert result.recipe.num_inference_steps == 25 and result.recipe.scheduler == "dpm++2m-karras"
    assert len(list((in_tmp / "outputs").glob("aiko-*.png"))) == 4


# --- Using it: the Python examples, in order, on mini ---------------------------------------------

def _embedding_the_readme_loads(path: Path, studio) -> None:
    """The A1111 embedding the README's example loads (what a user downloads), sized for its studio."""
    import torch
    from safetensors.torch import save_file

    width = studio.components["text_encoder"].config.hidden_size
    path.parent.mkdir(parents=True)
    save_file({"emb_params": torch.randn(2, width) * 0.02}, str(path))


def _loras_the_readme_loads(folder: Path, studio, names: list[str]) -> None:
    """LoRAs for the studio's model under lora/NAME/, as a training run writes them (random, non-zero)."""
    import copy

    import torch
    from peft import LoraConfig

    from charstudio import lora

    for seed, name in enumerate(names):
        unet = copy.deepcopy(studio.components["unet"])
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        lora.save_lora(unet, None, folder / name, name)


def test_using_it_examples_run(in_tmp, monkeypatch):
    from charstudio.trace import plots

    blocks_ = blocks(section("## Using it"), "python")
    assert len(blocks_) >= 7
    previews = []
    decoded = []  # sizes of the pictures the trace plots decoded
    real_decode = plots.decode_latents

    def spy(latents, decoder, family=None):
        images = real_decode(latents, decoder, family)
        decoded.extend(im.size for im in images)
        return images

    monkeypatch.setattr(plots, "decode_latents", spy)
    namespace: dict = {"show": lambda step, image: previews.append(step)}
    from charstudio.provenance import credentials

    try:
        _run_using_it_blocks(blocks_, namespace, in_tmp)
    finally:
        credentials.use_certificate(None, None)  # the C2PA example's test certificate lives in in_tmp
    _check_using_it(namespace, in_tmp, previews, decoded)


def _run_using_it_blocks(blocks_: list[str], namespace: dict, in_tmp: Path) -> None:
    for i, block in enumerate(blocks_):
        if "load_lora" in block:
            _loras_the_readme_loads(in_tmp / "lora", namespace["studio"], ["aiko", "watercolor"])
        if "load_embedding" in block:
            _embedding_the_readme_loads(in_tmp / "embeddings" / "easynegative.safetensors", namespace["studio"])
        exec(compile(block, "README.md", "exec"), namespace)
        if i == 0:
            studio = namespace["studio"]
            assert studio.model_id == "mini"  # the README's model, not a stand-in
            # "the same image, bit for bit (CPU)"
            assert namespace["again"].image.tobytes() == namespace["r"].image.tobytes()
            studio.default_steps = 6  # keep the doc test quick; the code path is the same


def _check_using_it(namespace: dict, in_tmp: Path, previews: list, decoded: list) -> None:
    # Poses and sheets: four labelled cells, saved with their recipes and sheet.json.
    assert len(namespace["sheet"].images) == 4 and (in_tmp / "sheets" / "rin" / "sheet.json").exists()
    # LoRAs: the mix is active, then unloaded.
    assert not namespace["studio"].active_loras
    # Interpolation: 8 frames from rin (yellow background) to kai (light blue background).
    frames = namespace["frames"]
    assert len(frames.frames) == 8 and (in_tmp / "rin_to_kai.gif").exists()
    first, last = (np.asarray(frames.frames[k].convert("RGB"), dtype=float) for k in (0, -1))
    corner = (slice(0, 6), slice(0, 6))
    yellowness = [float(f[corner].mean(axis=(0, 1))[0] - f[corner].mean(axis=(0, 1))[2]) for f in (first, last)]
    assert yellowness[0] > 0 > yellowness[1] and yellowness[0] - yellowness[1] > 60, yellowness  # red-blue
    assert 0 < frames.smoothness.evenness <= 1 and frames.smoothness.max >= frames.smoothness.mean
    # "on mini the mix runs, but the unknown words only push the embedding off rin" (measured 19-26 levels)
    plain = namespace["studio"].generate("rin", seed=namespace["mix"].recipe.seed)
    assert mean_difference([plain.image, namespace["mix"].images[0]]) > 8
    assert len(namespace["walk"].images) == 8
    # Tracing: 25 records; the filmstrip and the GIF show pictures decoded by the VAE, not 8x8 latents.
    assert len(namespace["tr"].records) == 25
    for name in ("filmstrip.png", "schedule.png", "attention.png", "denoise.gif"):
        assert (in_tmp / name).stat().st_size > 0, name
    assert decoded and set(decoded) == {(64, 64)}, set(decoded)
    from PIL import Image

    gif = Image.open(in_tmp / "denoise.gif")
    gif.seek(gif.n_frames - 1)
    assert mean_difference([gif.convert("RGB"), namespace["result"].image]) < 12  # "last frame = result"
    assert previews  # live previews arrived
    # The character workflows' example.
    assert namespace["blue"].recipe.inpaint["mask"] and namespace["fixed"].recipe.detail["parts"] == ["face", "hands"]
    assert namespace["big"].image.size == (96, 96) and namespace["big"].recipe.hires["scale"] == 1.5
    assert namespace["views"].labels == ["front", "three-quarter", "side", "back"]
    assert len(namespace["faces"].images) == 3 and [r["box"] for r in namespace["two"].recipe.regions]
    # The pose editor's example: the arm-up pose is saved to the user's library and drawn.
    from charstudio.pose import list_poses, load_pose

    assert "arm_up" in list_poses()
    arm_up, front = load_pose("arm up"), load_pose("standing_front")
    assert (arm_up.canvas_width, arm_up.canvas_height) == (front.canvas_width, front.canvas_height)
    assert arm_up.body[4][1] < front.body[4][1] - 100  # the right wrist (COCO-18 joint 4) went up
    # Identity: the sheet's scores come from mini's scorer, one per picture, the first 1.0.
    identity = namespace["sheet"].identity
    assert identity.scorer == "mini" and len(identity.scores) == 4 and identity.scores[0] == 1.0
    # The cast: @rin and @kai expand to their cards, one region each, left to right.
    scene = namespace["scene"]
    assert [c["name"] for c in scene.recipe.cast] == ["rin", "kai"] and "@" not in scene.recipe.prompt
    assert [r["box"] for r in scene.recipe.regions] and len(scene.recipe.regions) == 2
    # A LoRA per character: each region records its own adapter.
    regions = namespace["pair_picture"].recipe.regions
    assert [list(r["loras"]) for r in regions] == [[str(namespace["lora_file"]("zorbi"))],
                                                   [str(namespace["lora_file"]("vimbo"))]]
    # Packs: every outfit x expression of rin's card, a score on each sprite; redraw_sprite gives one back.
    pack = namespace["pack"]
    assert len(pack.labels) == 9 and len(pack.identity.scores) == 9 and (in_tmp / "packs" / "rin" / "index.json").exists()
    assert namespace["image"].size == pack.images[0].size
    # Storyboards: six panels, a page as PNG and PDF.
    assert len(namespace["board"].tries) == 6
    assert (in_tmp / "story" / "page.png").exists() and (in_tmp / "story" / "page.pdf").exists()
    # Provenance: the watermark reads back with the recipe's payload, and is absent when switched off.
    assert namespace["reading"].found and namespace["reading"].payload == namespace["watermark"].payload_for(
        namespace["drawn"].recipe)
    assert namespace["plain"].recipe.watermark is False
    # The C2PA manifest: created, signed by the test certificate and trusted with its root.
    report = namespace["report"]
    assert report.manifest.action_names == ["c2pa.created"] and report.manifest.trusted
    # Draft mode: mini's 4-step LoRA, then the keeper at the studio's full steps, same seed.
    draft, keeper = namespace["draft"].recipe, namespace["keeper"].recipe
    assert draft.draft["preset"] == "mini-lcm" and draft.num_inference_steps == 4 and draft.scheduler == "lcm"
    assert keeper.draft is None and keeper.seed == draft.seed == 7 and not keeper.loras
    assert keeper.num_inference_steps == namespace["studio"].default_steps
    # The guard: both pictures scored as drafts and at full quality.
    rows = namespace["guard_report"].to_dict()["rows"]
    assert len(rows) == 2 and all(r["full"] is not None for r in rows[1:])
    assert namespace["cached"].recipe.feature_cache == {"interval": 3, "branch": 0}
    assert namespace["small"].quantize == "int8" and namespace["int8_picture"].recipe.quantize == "int8"


# --- Using it: the shell examples ---------------------------------------------------------------

def _aiko_pictures(folder: Path) -> None:
    from charstudio.mini.world import write_lora_dataset

    write_lora_dataset(folder)
    for caption in folder.glob("*.txt"):
        caption.unlink()


def test_lora_recipes(in_tmp, capsys, one_load):
    text = section("### Training a LoRA on a character")
    # mini's recipe: the dataset line (as written), training (2 steps, not 300), drawing with it.
    recipe = next(b for b in blocks(text, "bash") if "write_lora_dataset" in b)
    steps = lines(recipe)
    assert steps[0].startswith('python -c "')
    exec(shlex.split(steps[0])[2], {})
    data = in_tmp / "zorbi_pictures"
    pictures = sorted(data.glob("*.png"))
    assert len(pictures) == 8  # "This writes 8 pictures ..."
    for picture in pictures:
        caption = picture.with_suffix(".txt").read_text()
        assert caption.startswith("zorbi") and "cape" not in caption  # the cape is left to the trigger word
        assert picture.with_suffix(".pose.json").exists()
    code, out, err = run_line(steps[1], capsys, {"--steps 300": "--steps 2"})
    assert code == 0, err
    made = {p.name for p in (in_tmp / "lora" / "zorbi").iterdir()}
    assert {"pytorch_lora_weights.safetensors", "zorbi.safetensors", "training_config.json", "loss.csv"} <= made
    code, out, err = run_line(steps[2], capsys)
    assert code == 0, err
    from charstudio.result import Result

    assert "zorbi" in json.dumps(Result.from_png(printed_pngs(out)[0]).recipe.to_dict()["loras"])
    # The SD 1.5 and SDXL recipes on the tiny models, with a folder of pictures without captions.
    _aiko_pictures(in_tmp / "my_aiko_pictures")
    line = line_starting(text, "charstudio train-lora my_aiko_pictures/ --name aiko --model sd15 --trigger sks "
                               "--class-word girl", whole=True)
    code, out, err = run_line(line, capsys, {"--model sd15": "--model tiny --steps 2 --validation-images 0"})
    assert code == 0, err
    config = json.loads((in_tmp / "lora" / "aiko" / "training_config.json").read_text())
    assert "a picture of sks girl" in json.dumps(config)  # "here "a picture of sks girl""
    line = line_starting(text, "charstudio train-lora my_aiko_pictures/ --name aiko_xl")
    code, out, err = run_line(line, capsys, {"~/models/illustrious_v1.safetensors":
                                             "tiny-sdxl --steps 2 --validation-images 0"})
    assert code == 0, err
    assert (in_tmp / "lora" / "aiko_xl" / "aiko_xl.safetensors").exists()


def test_workflow_commands(in_tmp, capsys, one_load):
    text = section("### Character workflows: inpainting, detail pass, hires fix, turnarounds, expressions, "
                   "two characters")
    block = next(b for b in blocks(text, "") if "charstudio turnaround" in b)
    cli = {line.split()[1] + (" two" if "--region" in line else ""): line for line in lines(block)}
    code, out, err = run_line(cli["generate"], capsys, {
        " [--hires-strength 0.4] [--hires-steps N] [--hires-upscaler pixel|latent]": ""})
    assert code == 0, err
    picture = printed_pngs(out)[0]
    from PIL import Image

    assert Image.open(picture).size == (96, 96)  # 64 px drawn, hires 1.5
    code, out, err = run_line(cli["detail"], capsys, {"IMAGE.png": str(picture), "DIR": "detailed"})
    assert code == 0 and len(list((in_tmp / "detailed").glob("*.png"))) == 1, err
    code, out, err = run_line(cli["turnaround"], capsys, {" [--views front,side,back]": "", "DIR": "views"})
    assert code == 0 and len(list((in_tmp / "views").glob("0*.png"))) == 4, err
    code, out, err = run_line(cli["expressions"], capsys, {"DIR": "faces"})
    assert code == 0 and len(list((in_tmp / "faces").glob("0*.png"))) == 3, err
    code, out, err = run_line(cli["generate two"], capsys)
    assert code == 0, err
    assert Image.open(printed_pngs(out)[0]).size == (128, 64)


def test_draft_commands(in_tmp, capsys, one_load):
    text = section("### Draft mode: many candidates fast, then finish the keepers")
    block = next(b for b in blocks(text, "") if "charstudio finish" in b)
    cli = {line.split()[1]: line for line in lines(block)}
    code, out, err = run_line(cli["generate"], capsys)
    assert code == 0 and "mini-lcm" in err and (in_tmp / "drafts" / "rin-7.png").exists(), err
    code, out, err = run_line(cli["finish"], capsys)
    assert code == 0 and len(list((in_tmp / "keepers").glob("*.png"))) == 1, err
    code, out, err = run_line(cli["presets"], capsys)
    assert code == 0 and "dmd2" in out and "CC-BY-NC-4.0" in out, err
    from charstudio.mini.distill import main

    named = set(re.findall(r"(--[a-z][a-z-]+)", next(b for b in blocks(text, "bash") if "distill" in b)))
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert named and not [flag for flag in named if flag not in help_text]


def test_command_line_listing(in_tmp, capsys):
    text = section("### Command line")
    block = blocks(text, "")[0]
    assert "charstudio models | cards | styles" in block
    for command, expect in (("models", "sd15"), ("cards", "rin"), ("styles", "watercolor"), ("poses", "waving")):
        code, out, err = run_line(f"charstudio {command}", capsys)
        assert code == 0 and expect in out, (command, err)
    line = next(line for line in lines(block) if "pose render" in line).split("| ")[-1]
    code, out, err = run_line("charstudio " + line, capsys, {"NAME": "waving"})
    assert code == 0 and (in_tmp / "x.png").exists(), err
    code, out, err = run_line("charstudio info x.png", capsys)  # a pose render has no recipe: one line, code 2
    assert code == 2 and "x.png" in err and "Traceback" not in err


def test_the_card_example_is_a_card(in_tmp):
    from charstudio.character import load_character

    card_yaml = blocks(section("## Character cards and styles"), "yaml")[0]
    (in_tmp / "aiko.yaml").write_text(card_yaml)
    card = load_character(in_tmp / "aiko.yaml")
    assert card.name == "aiko" and card.seed == 1234 and card.style == "cel-anime"
    assert card.lora == "aiko" and card.trigger == "aikochar" and card.traits["eyes"] == "violet eyes"


def test_every_shipped_card_comment_points_to_a_file():
    """kai.yaml's comment named charstudio/world.py, which moved to charstudio/mini/world.py (#40)."""
    root = README.parent
    for card in sorted((root / "prompts").rglob("*.yaml")):
        for path in re.findall(r"charstudio/[\w/]+\.py", card.read_text()):
            assert (root / path).exists(), f"{card.name} points to {path}, which does not exist"
    for path in re.findall(r"`((?:charstudio|docs|tools|benchmarks)/[\w/.-]+\.(?:py|md|png|json))`", TEXT):
        assert (root / path).exists(), f"the README names {path}, which does not exist"


def test_every_time_names_its_machine():
    """Each time the README gives (seconds, minutes) says on what machine and under what load (#40)."""
    prose = re.sub(r"```.*?```", "", TEXT, flags=re.S)
    bad = []
    for paragraph in re.split(r"\n\s*\n", prose):
        if re.search(r"\b\d[\d.]*(?:-\d[\d.]*)? ?(?:s|ms|min|minutes|seconds)(?![-\w])(?! of frames)", paragraph):
            if paragraph.lstrip().startswith("|"):
                continue  # a table's times are named by the sentence that introduces it
            if not re.search(r"2-core|H100|A100|GPU|CPU|machine", paragraph):
                bad.append(paragraph.strip()[:120])
            elif not re.search(r"idle|busy|nothing else running|load", paragraph):
                bad.append(paragraph.strip()[:120])
    assert not bad, bad
