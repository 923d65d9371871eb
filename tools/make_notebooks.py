"""Write the notebooks under notebooks/ from the cell texts below, without outputs.

The notebooks are generated so they stay reviewable as plain Python and reproducible:

    python tools/make_notebooks.py          # (re)write notebooks/*.ipynb
    python tools/make_notebooks.py --check  # exit 1 if a stored notebook differs (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# The first code cell of every notebook: pick the model. Kept identical across notebooks.
SETUP = '''\
# Pick the model. "mini" is built in: a 64 px model that charstudio trained on its own world of
# flat-colour characters (charstudio/mini/world.py). It runs offline on any CPU in seconds and knows that
# world's words: hair colours and styles, eye colours, outfits, hats, glasses, scarves, backgrounds.
# ("tiny" and "tiny-sdxl" are test fixtures: random weights, pictures of noise.) On a GPU use a real model:
#   MODEL = "sd15"                                  # downloads SD 1.5 + the OpenPose ControlNet once
#   MODEL = "/models/anything-v5.safetensors"       # an A1111/civitai SD 1.x single-file checkpoint
#   MODEL = "/models/illustrious-xl.safetensors"    # an SDXL one (Illustrious, NoobAI, Pony, Animagine):
#                                                   #   pictures at 1024x1024, 832x1216, 1216x832, ...
MODEL = "mini"

import os
from pathlib import Path

FAST = os.environ.get("CHARSTUDIO_FAST") == "1"  # CI runs every notebook with few steps
if MODEL in ("mini", "tiny", "tiny-sdxl"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the built-in models need no downloads
SIZE = 64 if FAST else None  # CI: small pictures; None = the model's native size
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()  # the repository
'''


def explore() -> list:
    return [
        new_markdown_cell("""\
# 01 · Explore characters

Design a character interactively. Pick a **character card** (YAML under `prompts/characters/`) or type a
prompt, a **style** (or mix two styles with the slider), a **pose** from the library (or upload a pose
JSON / a picture to detect a pose in), then the seed, steps, guidance, scheduler and size.

* **Generate** makes pictures, with a progress bar and live previews; **Cancel** stops at the next step.
* **Sheet** draws the card in every selected pose with one seed (a character sheet). Under the result each
  picture shows its **identity score** against the first (1 = the same character; the scorer is named once),
  and a picture below the bar is marked *drifting* in red. **min identity** (off / auto: the scorer's own
  threshold / a number) redraws such views with the next seed, up to **max tries**; the status line names
  the views that never reached it.
* **Draft** (under the buttons) draws fast with the fastest setting the model supports: a few-step LoRA
  (mini's own 4-step one, or one you loaded), else feature caching with fewer steps; its tooltip says which,
  and the line beside it says how the picture shown was drawn. **Finish** re-draws the selected draft at full
  quality with the same seed, adds it to the gallery and shows both pictures' identity scores.
* **Save** writes the selected picture as PNG, with its full recipe in the metadata.
* The **gallery** keeps the session's pictures. *restore* under a picture puts its recipe back into the
  controls (seed locked), so Generate remakes it exactly. Tick *pick* to send pictures to training (02).

The first code cell picks the model; everything else works the same on every model."""),
        new_code_cell(SETUP),
        new_code_cell('''\
from charstudio.ui import ExploreApp

app = ExploreApp(model=MODEL, steps=4 if FAST else None, size=SIZE, output_dir=str(ROOT / "outputs"),
                 lora_dir=os.environ.get("CHARSTUDIO_LORA_DIR", str(ROOT / "lora")))
app'''),
        new_markdown_cell("""\
## The same, from code

Every button can be scripted: set the controls' values, click, and wait. This is also how the tests
drive the app."""),
        new_code_cell('''\
app.card.value = "rin"  # a card written in mini's words; "aiko" and a style suit SD 1.5 models
app.select_poses(["waving"])
app.seed.value, app.lock_seed.value = 42, True
app.generate_button.click()
app.wait()
print(app.status.text)
app.gallery.items[-1].image'''),
        new_code_cell('''\
app.draft.switch.value = True  # Draft: explore fast ...
app.generate_button.click()
app.wait()
app.draft.finish_button.click()  # ... then re-draw the one to keep at full quality, same seed
app.wait()
app.draft.switch.value = False
print(app.status.text)  # both pictures' identity scores'''),
        new_markdown_cell("""\
A **character sheet** straight from the core API: one card, several poses, the same starting noise.
`reference_strength` adds reference attention to the first pose, which holds clothes and colours.
`sheet.identity` holds each picture's identity score against the first and who scored it."""),
        new_code_cell('''\
studio = app.studio
sheet = studio.sheet("rin", ["standing_front", "waving", "sitting"], seed=42,
                     num_inference_steps=4 if FAST else 25, width=SIZE, height=SIZE)
if sheet.identity is not None:
    print(f"identity ({sheet.identity.scorer}):", dict(zip(sheet.labels, sheet.identity.scores)))
sheet.grid_image'''),
        new_markdown_cell("""\
## Edit a pose

**Edit pose** (above the pose thumbnails) opens the pose editor on the first selected pose. Drag a joint
to move it, or drag near a person (not on a joint) to move the whole figure. The buttons act on the
selected person: **Mirror**, **Rotate**, **Bigger** / **Smaller**, **Add person** / **Delete person**,
**Undo** / **Redo**; start again from a library pose (**Load**), a pose JSON, a PNG's recipe or a picture
(**Open file**), with a **Reference** picture behind the skeleton. The control image beside it is what
the model sees, in either line style. **Save to library** writes `NAME.json` to your pose library
(`$CHARSTUDIO_POSE_DIR`, else `~/.charstudio/poses`) and selects it; **Use this pose** selects it without
saving. Then Generate draws the character in it. The same from code:"""),
        new_code_cell('''\
editor = app.poses.open_editor("standing_front")
x, y = editor.group.people[0].body[2, :2]  # the right shoulder (COCO-18 joint 2), in canvas pixels
editor.move_joint(0, "right_elbow", x - 10, y - 100)  # pull the right arm up
editor.move_joint(0, "right_wrist", x - 20, y - 200)
editor.save("arm up", overwrite=True)  # overwrite: this cell may run again
app.generate_button.click()  # the saved pose is now selected: Generate draws rin in it
app.wait()
print(app.status.text)
app.gallery.items[-1].image'''),
    ]


def train() -> list:
    return [
        new_markdown_cell("""\
# 02 · Train a LoRA on a character

Teach the model one character from 5-50 pictures of it.

1. **Dataset**: type a folder and press *Load* (or *Use gallery picks* to take the pictures ticked in
   the Explore gallery). Each picture shows its caption; edit them and press *Save captions*
   (`NAME.txt` beside `NAME.png`, the kohya convention). Pictures without a caption use
   "a picture of *trigger* *class*".
2. **Options**: the LoRA's name, trigger word, steps, rank, learning rate, validation and checkpoints.
3. **Start** trains with a live loss plot, validation samples and, beside the loss, an identity plot:
   the validation pictures' identity against the training pictures with the LoRA and at weight 0, and the
   scorer's threshold as a line. **Stop** ends after the current step
   and keeps the newest checkpoint; **Resume** continues from it.
4. At the end the LoRA is saved under `lora/NAME/` (diffusers and kohya/A1111 formats) and a
   **before/after** row shows the same seed at LoRA weights 0, 0.5 and 1."""),
        new_code_cell(SETUP),
        new_markdown_cell("""\
A small demo dataset, so the notebook runs anywhere. With `mini`, charstudio's world renderer draws one
character in 8 poses wearing a **red cape**, something `mini` never saw in training; the captions
describe everything else, so the trigger word `zorbi` has to learn the cape. Each picture's pose is
saved beside it (`NAME.pose.json`), so Load ticks *pose conditioning* (the README says what it does).
For `mini` the app is set up as the tests' LoRA check is (`charstudio.mini.evaluate.LORA_SETTINGS`,
300 steps, about 1.5 minutes on a 2-core CPU): afterwards "zorbi" before the character's caption, which
never mentions a cape, brings the cape out in most seeds (80% of the check's), at 64 px and with some
colour bleeding (the README has the figures). The before/after row draws the first caption. With other models the
model draws the demo pictures itself. Point the app at your own folder for real training."""),
        new_code_cell('''\
from charstudio.ui.common import get_studio
from charstudio.mini.world import write_lora_dataset

studio = get_studio(MODEL)  # shared with the app below: the model is loaded once
DATA = Path(os.environ.get("CHARSTUDIO_DATASETS", ROOT / "datasets")) / f"demo-{Path(MODEL).stem}"
if not DATA.is_dir() or not any(DATA.glob("*.png")):
    if MODEL == "mini":
        write_lora_dataset(DATA, trigger="zorbi", count=8, size=studio.default_size)
    else:
        demo = studio.generate("aiko", seed=1, num_images=4, num_inference_steps=4 if FAST else 25,
                               width=SIZE, height=SIZE)
        demo.save(DATA)
sorted(p.name for p in DATA.glob("*.png"))'''),
        new_code_cell('''\
from charstudio.ui import TrainApp

LORA_DIR = os.environ.get("CHARSTUDIO_LORA_DIR", str(ROOT / "lora"))
app = TrainApp(studio, data_dir=str(DATA), steps=4 if FAST else 300, output_dir=LORA_DIR)
app.name.value = "demo-zorbi"
app.trigger.value, app.class_word.value = "zorbi", "person"
if MODEL == "mini":  # the settings of mini's LoRA check (tests/test_mini.py)
    from charstudio.mini.evaluate import LORA_SETTINGS

    app.apply_settings(LORA_SETTINGS)  # pose conditioning: ticked by Load too (the demo has poses)
if FAST:
    app.steps.value = 4
    app.validation_steps.value, app.validation_inference_steps.value = 2, 2
    app.resolution.value = SIZE
app.load_dataset()
app'''),
        new_markdown_cell("""\
## The same, from code

Start training and wait for it (*replace* is ticked so the demo can be run again)."""),
        new_code_cell('''\
app.overwrite.value = True
app.start_button.click()
app.wait()
print(app.status.text)
print("loss:", [round(loss, 4) for _, loss in app.history][-5:])
print({kind: str(path) for kind, path in app.files.items()})'''),
    ]


def interpolate() -> list:
    return [
        new_markdown_cell("""\
# 03 · Interpolate designs, mix styles, animate poses

* **Design A → B**: two designs (cards, prompts, or pictures from the Explore gallery when the app is
  given `gallery=`), a frame count and a method. Both the starting noise (always slerp, so the noise keeps
  its energy) and the text embeddings are blended. *Even spacing* re-spaces the frames so neighbours
  differ by similar amounts. A scrubber, a GIF, and the **smoothness** figures (mean and largest change
  between frames, and evenness = 1 − Gini) show the result.
* **Style mix**: one slider per style preset; the styles are mixed in embedding space.
* **Pose to pose**: one character, one seed, keypoints interpolated from pose A to pose B."""),
        new_code_cell(SETUP),
        new_code_cell('''\
from charstudio.ui import InterpolateApp

app = InterpolateApp(model=MODEL, steps=2 if FAST else None, size=SIZE, frames=3 if FAST else 8)
app'''),
        new_markdown_cell("## The same, from code"),
        new_code_cell('''\
app.design_a.source.value, app.design_b.source.value = "card:rin", "card:kai"
app.seed_a.value, app.seed_b.value = 1, 2
app.interpolate_button.click()
app.wait()
print(app.status.text)
s = app.interpolation.smoothness
print(f"mean change {s.mean:.4f}, largest {s.max:.4f}, evenness {s.evenness:.3f} (in {s.space})")
app.interpolation.contact_sheet()'''),
        new_code_cell('''\
app.pose_a.value, app.pose_b.value = "standing_front", "jumping"
app.animate_button.click()
app.wait()
print(app.status.text)
app.animation.grid()'''),
        new_markdown_cell("A style mix straight from the core API:"),
        new_code_cell('''\
mix = app.studio.mix_styles("pip", {"watercolor": 0.6, "pixel-art": 0.4}, seed=3,
                            num_inference_steps=2 if FAST else 25, width=SIZE, height=SIZE)
print(mix.weights)
mix.images[0]'''),
    ]


def process() -> list:
    return [
        new_markdown_cell("""\
# 04 · Inside the diffusion process

*Trace* generates one picture while recording every step.

* **Steps**: a slider over the steps shows *x_t* (what the sampler holds: noise turning into a picture)
  beside the **predicted x0** (the model's guess of the finished picture at that step).
* **Noise schedule**: alpha-bar and log SNR over the training timesteps, with the sampled steps marked.
* **Attention**: pick a prompt token to see where it looked (cross-attention, averaged over layers and steps).
* **Compare**: the same prompt and seed with two schedulers or step counts, side by side.

With the built-in `mini` model you can watch a character form out of noise in 20 steps on a CPU."""),
        new_code_cell(SETUP),
        new_code_cell('''\
from charstudio.ui import ProcessApp

app = ProcessApp(model=MODEL, steps=6 if FAST else None, size=SIZE)
app'''),
        new_markdown_cell("## The same, from code"),
        new_code_cell('''\
app.seed.value = 5
app.trace_button.click()
app.wait()
print(app.status.text)
app.step.value = 2  # the slider: x_t and predicted x0 of step 2
print(app.step_info.value)'''),
        new_code_cell('''\
app.scheduler_a.value, app.scheduler_b.value = "ddim", "euler-a"
app.compare_button.click()
app.wait()
print(app.status.text)'''),
        new_markdown_cell("The recorded trace itself, plotted by the core (`charstudio.trace`):"),
        new_code_cell('''\
import tempfile
from IPython.display import Image
from charstudio.trace import plot_filmstrip

trace = app.trace
print(len(trace.records), "steps;", "tokens:", [t.replace("</w>", "") for t in trace.tokens][:12])
path = plot_filmstrip(trace, Path(tempfile.mkdtemp()) / "filmstrip.png", decoder=app.studio.components["vae"])
Image(filename=str(path))'''),
    ]


def workflows() -> list:
    return [
        new_markdown_cell("""\
# 05 · Character workflows

Once a character is drawn, the usual next jobs are each one call here, and each result's recipe (saved in its
PNG) re-runs the whole job:

* **Inpainting**: redraw one part (a body region from the pose, a box or a mask picture), keep every other pixel.
* **Detail pass**: redraw the face and hands at the model's size and paste them back.
* **Hires fix**: draw at the native size, upscale, redraw larger.
* **Turnaround**: front, three-quarter, side and back views of one card.
* **Expression sheet**: one card, several expressions, one labelled grid.
* **Two characters**: regional prompts, each side of the picture with its own description.

The app below runs any of them on a card or prompt and shows the picture before and after. With **Draft** on it
draws fast (a few-step LoRA, else feature caching with fewer steps); **Finish** runs the same workflow again at
full quality with the draft's seed and shows the draft beside the finished picture with their identity scores.
The cells after it
make the same calls from code, each with a before/after picture. On `mini` (64 px) these are small; on SD 1.5 /
SDXL the same calls work at full size."""),
        new_code_cell(SETUP),
        new_code_cell('''\
from charstudio.ui import WorkflowsApp

app = WorkflowsApp(model=MODEL, steps=6 if FAST else None)
app'''),
        new_code_cell('''\
app.workflow.value = "inpaint"  # the same from code: pick a workflow, click Run, wait
app.seed.value = 3
app.run_button.click()
app.wait()
print(app.status.text)'''),
        new_code_cell('''\
from charstudio.imaging import image_grid

studio = app.studio  # the app's model, loaded once
STEPS = 6 if FAST else None  # None: the model's default
girl = studio.generate("a girl with long red hair, a white dress", pose="standing_front", seed=1,
                       num_inference_steps=STEPS)
girl.image'''),
        new_markdown_cell("## Inpainting: the hair, redrawn blue (the mask comes from the pose)"),
        new_code_cell('''\
blue = studio.inpaint(girl, mask="hair", prompt="a girl with long blue hair, a white dress", strength=0.8,
                      num_inference_steps=STEPS)
print("inpainted:", blue.recipe.inpaint["mask"]["region"])
image_grid([girl.image, blue.image], labels=["before", "hair inpainted"])'''),
        new_markdown_cell("## Detail pass: face and hands redrawn at the model's size"),
        new_code_cell('''\
fixed = studio.detail(girl, parts=("face", "hands"), steps=STEPS)
print("detail parts:", fixed.recipe.detail["parts"])
image_grid([girl.image, fixed.image], labels=["before", "detail pass"])'''),
        new_markdown_cell("## Hires fix: 1.5x, with a second pass"),
        new_code_cell('''\
big = studio.generate("a girl with long red hair, a white dress", pose="standing_front", seed=1,
                      num_inference_steps=STEPS, hires=1.5)
print("hires size:", big.image.size, "recipe size:", (big.recipe.width, big.recipe.height))
image_grid([girl.image.resize(big.image.size), big.image], labels=["resized", "hires fix"])'''),
        new_markdown_cell("""\
## Turnaround: front, three-quarter, side, back

Each view gets an identity score against the front; `min_identity="auto"` redraws a view below the scorer's
threshold (or one that fails the back-is-not-a-mirror check) with the next seed, up to `max_tries`. In the app,
*min identity* and *max tries* sit under the Turnaround and Expression sheet options, and the scores show
under the pictures."""),
        new_code_cell('''\
views = studio.turnaround("kai", seed=1, num_inference_steps=STEPS, min_identity="auto", max_tries=2)
print("views:", views.labels)
if views.identity is not None:
    print(f"identity ({views.identity.scorer}, threshold {views.identity.threshold:.3f}):",
          {label: round(score, 3) for label, score in zip(views.labels, views.identity.scores)})
print(views.identity_note or "every view reached the threshold")
views.grid_image'''),
        new_markdown_cell("## Expression sheet"),
        new_code_cell('''\
faces = studio.expressions("kai", ["neutral", "smiling", "angry"], seed=3, num_inference_steps=STEPS)
print("expressions:", faces.labels)
faces.grid_image'''),
        new_markdown_cell("## Two characters in one picture: regional prompts"),
        new_code_cell('''\
from charstudio.pose.compose import side_by_side

w, h = (128, 64) if studio.default_size < 256 else (2 * studio.default_size, studio.default_size)
scene = "a girl with red hair and a boy with blue hair"
two_poses = side_by_side("standing_front", "waving", width=w, height=h)
regions = [{"prompt": "a girl with red hair", "box": "left"}, {"prompt": "a boy with blue hair", "box": "right"}]
plain = studio.generate(scene, pose=two_poses, width=w, height=h, seed=2, num_inference_steps=STEPS)
two = studio.generate(scene, pose=two_poses, width=w, height=h, seed=2, num_inference_steps=STEPS, regions=regions)
print("regions:", [r["box"] for r in two.recipe.regions])
image_grid([plain.image, two.image], labels=["one prompt", "regional prompts"])'''),
        new_markdown_cell("""\
The **pose editor** on a two-person pose: pick a person (or press them on the canvas) and drag their
joints; **Mirror**, **Rotate**, **Bigger** / **Smaller** act on that person; **Add person** /
**Delete person**; **Save to library** keeps both people in one pose file. `editor.pose()` is the edited pose."""),
        new_code_cell('''\
from charstudio.ui.pose_editor import PoseEditor

editor = PoseEditor(two_poses)
editor.mirror(person=1)  # the boy waves with his other hand
edited = studio.generate(scene, pose=editor.pose(), width=w, height=h, seed=2, num_inference_steps=STEPS,
                         regions=regions)
print("people in the edited pose:", len(editor.group.people))
display(editor)
image_grid([two.image, edited.image], labels=["regional prompts", "edited pose"])'''),
        new_markdown_cell("""\
Save any of them with `.save("outputs")`: the PNG carries the recipe, and `studio.run(Result.from_png(path).recipe)`
re-runs the workflow. The same jobs from the command line: `charstudio inpaint`, `charstudio detail`,
`charstudio generate --hires 1.5`, `charstudio turnaround`, `charstudio expressions`, `charstudio generate --region`."""),
    ]


def storyboard() -> list:
    return [
        new_markdown_cell("""\
# 06 · Storyboard

A storyboard script (YAML) lists panels: who is in each (`@rin`, `@rin:school`, or with an expression), a pose
(two poses side by side for two characters), a setting, a shot (full, medium, close-up) and the caption and line
lettered under the panel. Playing it draws every panel (two characters share a panel as regional prompts), scores
each character against its card's anchor picture (the card drawn whole, front on) and re-draws a panel at the next
seed while a character is below the identity threshold. The page (PNG and PDF), every panel's PNG (its recipe
inside) and `storyboard.json` (recipes, scores, tries) are written to a folder.

The app plays the script in its box; then pick a panel, edit its caption or line, and **Update words** (nothing is
drawn) or **Redraw panel** (a new picture of that panel). The cells after it do the same from code."""),
        new_code_cell(SETUP),
        new_code_cell('''\
from charstudio.storyboard import example_script, load_script
from charstudio.ui import StoryboardApp

script = load_script(example_script())  # prompts/storyboards/example.yaml: six panels with rin and kai
if FAST:
    script.panels = script.panels[:3]  # CI: the first three (one of them with both characters)
app = StoryboardApp(model=MODEL, script=script, steps=6 if FAST else None)
app'''),
        new_code_cell('''\
app.play_button.click()  # the same from code: Play, wait, read the status line
app.wait()
print(app.status.text)'''),
        new_markdown_cell("""\
## The page, and how each character scored

Each character is cropped from its panel (the whole picture, or its half of a two-character panel) and scored
against its card's anchor; `tries` counts the pictures each panel took."""),
        new_code_cell('''\
board = app.board
print("tries per panel:", board.tries)
for panel in board.panels:
    print(f"panel {panel.index + 1}:", ", ".join(f"{c['name']} {c['score']:.3f}" for c in panel.characters
                                                if c.get("score") is not None))
bar = board.settings["min_identity"]
print(board.note or (f"every character reached identity >= {bar:.3f} ({board.settings['scorer']})"
                     if bar is not None else "no identity bar"))
board.page()'''),
        new_markdown_cell("""\
## One panel again: a new line, then a new picture"""),
        new_code_cell('''\
app.panel.value = 2
app.line.value = "Where were you?"
app.reletter_button.click()  # the words only: nothing is drawn
app.wait()
print(app.status.text)
app.redraw_button.click()  # a new picture of panel 2, at the seed after its last try
app.wait()
print(app.status.text)
print("panel 2 is now seed", app.board.panels[1].recipe.seed, "in", app.board.folder)'''),
        new_markdown_cell("""\
The same from code and from the command line:

```python
from charstudio.storyboard import draw_storyboard, redraw_panel
board = draw_storyboard(studio, "prompts/storyboards/example.yaml", out="story")  # min_identity="auto", max_tries=4
board = redraw_panel(studio, "story", 2, line="Where were you?")                  # words only; seed=... re-draws
```

```
charstudio storyboard prompts/storyboards/example.yaml --out story [--min-identity auto] [--max-tries 4] [--seed N]
charstudio storyboard story --panel 2 --line "Where were you?"   # add --seed N for a new picture
```"""),
    ]


BUILDERS = {
    "01_explore_characters.ipynb": explore,
    "02_train_lora.ipynb": train,
    "03_interpolate.ipynb": interpolate,
    "04_diffusion_process.ipynb": process,
    "05_character_workflows.ipynb": workflows,
    "06_storyboard.ipynb": storyboard,
}


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=BUILDERS[name]())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"  # stable ids keep diffs quiet
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the stored notebooks")
    args = parser.parse_args(argv)
    stale = []
    for name in BUILDERS:
        text = nbformat.writes(build(name)) + "\n"
        path = NOTEBOOKS / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            NOTEBOOKS.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python tools/make_notebooks.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
