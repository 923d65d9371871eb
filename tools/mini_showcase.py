"""Draw the README's picture of the built-in `mini` model (docs/images/mini_showcase.png).

    python tools/mini_showcase.py [--out docs/images/mini_showcase.png]

Row 1: the `rin` card as a 4-pose sheet. Row 2: six hair colours asked for in text.
Row 3: hair colour interpolated from red to blue over 7 frames. Row 4: the LoRA check's
prompt before (left) and after (right) a LoRA trained on 8 pictures of a red cape.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from PIL import Image, ImageDraw

    from charstudio import Studio
    from charstudio.io_utils import atomic_write
    from charstudio.mini.evaluate import HAIR_TEST_COLOURS, LORA_SETTINGS, _feature_subject
    from charstudio.training import LoraTrainingConfig
    from charstudio.mini.world import SCARF_CHARACTER, Attributes, lora_prompt, random_pose, write_lora_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "images" / "mini_showcase.png"))
    p.add_argument("--scale", type=int, default=2)
    args = p.parse_args()

    studio = Studio.from_pretrained("mini", device="cpu")
    sheet = studio.sheet("rin", ["standing_front", "walking", "waving", "running"], seed=7, compute_score=False)
    base = Attributes(hair_style="long", outfit_colour="white", outfit_type="dress", background="light blue")
    pose = random_pose(random.Random(3), 64, names=["standing_front"])
    colours = [studio.generate(base.replace(hair_colour=c).caption(), pose=pose, seed=1).images[0]
               for c in HAIR_TEST_COLOURS]
    morph = studio.interpolate(base.replace(hair_colour="red").caption(), base.replace(hair_colour="blue").caption(),
                               frames=7, pose=pose, seed=1).frames
    # The LoRA check (tests/test_mini.py): the same prompt and poses before and after training.
    prompt = lora_prompt(SCARF_CHARACTER, LORA_SETTINGS["trigger_word"])
    seeds = [0, 1, 2]

    def draw_seeds() -> list:
        return [studio.generate(prompt, pose=_feature_subject(s, 64)[1], seed=s, num_inference_steps=20).images[0]
                for s in seeds]

    before = draw_seeds()
    with tempfile.TemporaryDirectory() as tmp:
        write_lora_dataset(Path(tmp) / "data", trigger=LORA_SETTINGS["trigger_word"], count=8)
        cfg = LoraTrainingConfig(**LORA_SETTINGS, data_dir=str(Path(tmp) / "data"), name="zorbi",
                                 output_dir=str(Path(tmp) / "lora"))
        list(studio.train_lora(cfg))
        studio.load_lora(Path(tmp) / "lora" / "zorbi", weight=1.0)
        after = draw_seeds()
        studio.unload_loras()
    blank = Image.new("RGB", (64, 64), "white")
    rows = [("sheet: rin in 4 poses", sheet.images), ("text: " + ", ".join(HAIR_TEST_COLOURS) + " hair", colours),
            ("interpolation: red -> blue hair", morph),
            ("LoRA 'zorbi' (a red cape, 8 pictures, 300 steps): before | after", before + [blank] + after)]

    tile, label = 64 * args.scale, 14
    width = 7 * tile
    canvas = Image.new("RGB", (width, len(rows) * (tile + label)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (title, images) in enumerate(rows):
        y = r * (tile + label)
        draw.text((2, y + 1), title, fill=(0, 0, 0))
        for i, im in enumerate(images):
            canvas.paste(im.resize((tile, tile), Image.NEAREST), (i * tile, y + label))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: canvas.save(tmp, format="PNG"), overwrite=True)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
