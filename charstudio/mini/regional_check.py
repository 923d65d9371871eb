"""Regional LoRAs on mini, measured: two characters side by side, a red-cape LoRA in one region and
an orange-boots LoRA in the other (issue 37, "Regional LoRAs, no bleed").

The two LoRAs ship in ``charstudio/data/mini/loras/`` (``zorbi``: the cape, ``vimbo``: the boots;
about 650 KB each). They are rebuilt, the same on any machine (training runs on one thread), by::

    python -m charstudio.mini.regional_check build charstudio/data/mini/loras

and measured (what tests/test_regional_lora.py asserts and benchmarks/regional_lora.py prints) by::

    python -m charstudio.mini.regional_check measure
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal

import numpy as np

from .evaluate import FEATURES, LORA_SETTINGS, HeldOutFeature, one_thread
from .measure import boots_region, orange_fraction
from .world import SCARF_CHARACTER, Attributes, lora_prompt

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

LORA_DIR = Path(__file__).resolve().parent.parent / "data" / "mini" / "loras"
CAPE_CHARACTER = SCARF_CHARACTER  # the LoRA check's boy: short black hair, white shirt, grey background
BOOTS_CHARACTER = Attributes(hair_colour="blonde", hair_style="long", eye_colour="blue", outfit_colour="green",
                             outfit_type="shirt and trousers", accessory="none", skin="light", background="grey",
                             who="girl")
# name -> (character, held-out accessory); the name is the trigger word, the LoRA's folder and its adapter
LORAS = {"zorbi": (CAPE_CHARACTER, "red cape"), "vimbo": (BOOTS_CHARACTER, "orange boots")}
# The boots' threshold is half the smallest orange share that true boot pictures keep through mini's
# VAE (0.55 of the outline on seeds 0-9; 0.94-0.99 before the VAE); the plain character has none.
BOOTS = HeldOutFeature("orange boots", boots_region, orange_fraction, threshold=0.27)
CHECKS = {"zorbi": FEATURES["red cape"], "vimbo": BOOTS}
SCENE = "a boy and a girl, grey background"
POSES = ("standing_front", "waving", "walking", "hands_on_hips")
WIDTH, HEIGHT = 128, 64
Mode = Literal["regional", "global", "none"]


def build(folder: Any = LORA_DIR, names: Iterable[str] = tuple(LORAS)) -> list[Path]:
    """Train the LoRAs (`LORAS`) with the LoRA check's settings (`evaluate.LORA_SETTINGS`, the trigger
    word their name) on 8 pictures each, on one thread; keep only each one's diffusers file."""
    import shutil
    import tempfile

    from ..studio import Studio
    from ..training import LoraTrainingConfig
    from .world import write_lora_dataset

    folder = Path(folder)
    studio = Studio.from_pretrained("mini", device="cpu")
    out = []
    for name in names:
        attrs, accessory = LORAS[name]
        with tempfile.TemporaryDirectory() as tmp:
            write_lora_dataset(Path(tmp) / "data", trigger=name, attrs=attrs, count=8, size=64, accessory=accessory)
            cfg = LoraTrainingConfig(**{**LORA_SETTINGS, "trigger_word": name}, data_dir=str(Path(tmp) / "data"),
                                     name=name, output_dir=str(Path(tmp) / "lora"))
            with one_thread():
                for _ in studio.train_lora(cfg):
                    pass
            (folder / name).mkdir(parents=True, exist_ok=True)
            for kept in ("pytorch_lora_weights.safetensors", "training_config.json"):
                shutil.copyfile(Path(tmp) / "lora" / name / kept, folder / name / kept)
        out.append(folder / name / "pytorch_lora_weights.safetensors")
    return out


def lora_file(name: str, folder: Any = LORA_DIR) -> Path:
    return Path(folder) / name / "pytorch_lora_weights.safetensors"


def scene_configs(studio: Studio, mode: Mode, seeds: Iterable[int], *, steps: int = 20, folder: Any = LORA_DIR,
                  weight: float = 1.0, only: str | None = None) -> list[tuple[Any, Any]]:
    """(recipe, two-person pose) per seed: the cape's boy on the left, the boots' girl on the right,
    each with his or her trigger word in the region's prompt. ``mode``: "regional" (each LoRA in its
    own region's ``loras``), "global" (both in the recipe's ``loras``: the bleed today's tools show)
    or "none". ``only``: that one of `LORAS`, the other left out."""
    from ..pose.compose import side_by_side

    names = list(LORAS)
    used = [only] if only else names
    adapters = {}
    if mode == "global":
        adapters = {studio.lora_set.load_off(lora_file(n, folder)): weight for n in used}
    jobs = []
    for seed in seeds:
        rng = random.Random(50_000 + seed)
        group = side_by_side(rng.choice(POSES), rng.choice(POSES), width=WIDTH, height=HEIGHT)
        regions = []
        for name, box in zip(names, ("left", "right")):
            region: dict[str, Any] = {"prompt": lora_prompt(LORAS[name][0], name), "box": box}
            if mode == "regional" and name in used:
                region["loras"] = {str(lora_file(name, folder)): weight}
            regions.append(region)
        config = studio.make_config(SCENE, pose=group, seed=seed, width=WIDTH, height=HEIGHT, num_inference_steps=steps,
                                    regions=regions, loras=adapters)
        jobs.append((config, group))
    return jobs


def shown_in_half(check: HeldOutFeature, image: Any, person: Any, half: np.ndarray) -> tuple[bool, float]:
    """Whether ``check``'s feature is on ``person``: its colour's share of the feature's region reaches the
    threshold and is ``concentration`` times its share in the rest of that person's half."""
    region = check.region(person) & half
    inside, outside = check.fraction(image, region), check.fraction(image, half & ~region)
    return inside >= check.threshold and inside >= check.concentration * outside, inside


def measure(studio: Studio, mode: Mode = "regional", seeds: Iterable[int] = range(10), *, steps: int = 20,
            folder: Any = LORA_DIR, only: str | None = None) -> dict[str, Any]:
    """Each feature's rate on its own character and on the other one, over ``seeds`` (``only``: see
    `scene_configs`)."""
    seeds = list(seeds)
    jobs = scene_configs(studio, mode, seeds, steps=steps, folder=folder, only=only)
    with one_thread():
        images = studio.run_batch([config for config, _ in jobs]).images
    halves = [np.zeros((HEIGHT, WIDTH), bool), np.zeros((HEIGHT, WIDTH), bool)]
    halves[0][:, :WIDTH // 2], halves[1][:, WIDTH // 2:] = True, True
    names = list(LORAS)
    seen: dict[str, dict[str, list[bool]]] = {n: {"own": [], "other": []} for n in names}
    for image, (_, group) in zip(images, jobs):
        for i, name in enumerate(names):
            check = CHECKS[name]
            seen[name]["own"].append(shown_in_half(check, image, group.people[i], halves[i])[0])
            seen[name]["other"].append(shown_in_half(check, image, group.people[1 - i], halves[1 - i])[0])
    return {"mode": mode, "seeds": seeds, "steps": steps,
            "own": {n: float(np.mean(seen[n]["own"])) for n in names},
            "other": {n: float(np.mean(seen[n]["other"])) for n in names},
            "shown": seen, "images": images}


def main(argv: list[str] | None = None) -> int:
    """python -m charstudio.mini.regional_check build [FOLDER] | measure [--seeds N]"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m charstudio.mini.regional_check", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the two LoRAs into FOLDER (default: the package's)")
    b.add_argument("folder", nargs="?", default=str(LORA_DIR))
    m = sub.add_parser("measure", help="print the regional and global rates")
    m.add_argument("--seeds", type=int, default=10)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "build":
        for path in build(args.folder):
            print(path, path.stat().st_size, "bytes")
        return 0
    from ..studio import Studio

    studio = Studio.from_pretrained("mini", device="cpu")
    for mode in ("regional", "global", "none"):
        r = measure(studio, mode, range(args.seeds))
        print(mode, "own:", r["own"], "other:", r["other"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
