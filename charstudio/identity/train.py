"""The training recipe of mini's identity scorer (`charstudio.identity.mini_scorer`).

    python -m charstudio.identity.train --out charstudio/data/mini/identity [--work runs/identity]

In `charstudio.mini.world` identity is known: a character is every attribute except the
background (hair colour and style, eyes, outfit colour and type, accessory, skin, who). Each step
draws ``characters`` characters, each with a *sibling* that differs in exactly one attribute that
is drawn (a hard negative), and renders every one ``views`` times in other poses and backgrounds.
The pictures are augmented as mini's generated pictures differ from the renders (blur, a softer
down-and-up sampling, noise, small shifts and colour jitter), and the embedder learns with a
supervised contrastive loss (the other views of the same character are the positives, everything
else in the batch, siblings included, the negatives). ``who`` is not drawn by the renderer, so no
sibling differs in it only.

Deterministic from ``--seed``: step ``k``'s batch comes from the seed and ``k`` alone, so a run that
is killed and started again with the same ``--work`` resumes from its last checkpoint (weights
and optimizer state in safetensors, the rest JSON) and ends with the same weights.

Seeds: training characters come from [0, 1e9), the validation set (where the threshold is chosen)
from `VALIDATION_SEEDS`, the held-out test renders from `TEST_SEEDS`; the tests use seeds from
`TEST_SEEDS` too, never used in training.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..io_utils import atomic_write
from .mini_scorer import DEFAULT_ARCHITECTURE, INFO_FILE, WEIGHTS_FILE, MiniScorer, build_embedder

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

TRAIN_SEEDS = (0, 1_000_000_000)
VALIDATION_SEEDS = 1_000_000_000  # + i
TEST_SEEDS = 2_000_000_000  # + i
# Identity attributes the renderer draws: a sibling differs from its character in one of these.
DRAWN_IDENTITY = ("hair_colour", "hair_style", "eye_colour", "outfit_colour", "outfit_type", "accessory", "skin")


@dataclass
class IdentityRecipe:
    """How the shipped scorer was trained (recorded in identity.json)."""

    seed: int = 0
    steps: int = 1000
    characters: int = 12  # per step, each with a one-attribute sibling: 2x identities
    views: int = 3  # pictures of each identity per step
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    temperature: float = 0.1
    checkpoint_every: int = 50
    validation_characters: int = 200
    test_characters: int = 300
    generated_characters: int = 40  # mini's own generated pictures: poses per character below
    generated_poses: int = 3
    generated_steps: int = 20


# 1. the world's characters, their views and the augmentation ----------------------------------

def character(seed: int) -> Any:
    """The attributes of character ``seed`` (its background is a view's, not the character's)."""
    from ..mini.world import random_attributes

    return random_attributes(random.Random(seed))


def sibling(attrs: Any, rng: np.random.Generator) -> Any:
    """``attrs`` with one drawn identity attribute changed to another value."""
    from ..mini import world

    tables = {"hair_colour": world.HAIR_COLOURS, "hair_style": world.HAIR_STYLES, "eye_colour": world.EYE_COLOURS,
              "outfit_colour": world.OUTFIT_COLOURS, "outfit_type": world.OUTFIT_TYPES,
              "accessory": world.ACCESSORIES, "skin": world.SKIN_TONES}
    name = DRAWN_IDENTITY[int(rng.integers(len(DRAWN_IDENTITY)))]
    others = [v for v in tables[name] if v != getattr(attrs, name)]
    return attrs.replace(**{name: others[int(rng.integers(len(others)))]})


def view(attrs: Any, key: str, size: int = 64) -> tuple[Any, Any]:
    """(picture, pose) of ``attrs`` in the pose and background that ``key`` picks."""
    from ..mini.world import BACKGROUNDS, random_pose, render

    rng = random.Random(key)
    pose = random_pose(rng, size)
    shown = attrs.replace(background=rng.choice(list(BACKGROUNDS)))
    return render(shown, pose), pose


def augment(image: Any, rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) float32 in [-1, 1]: ``image`` softened, shifted, colour-jittered and noisy, as
    mini's generated pictures differ from the renders it learnt from."""
    from PIL import Image, ImageFilter

    w, h = image.size
    if rng.random() < 0.35:  # mini's VAE draws softer edges: down and up again
        small = int(rng.integers(w // 2, 3 * w // 4 + 1))
        image = image.resize((small, small), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 1.1))))
    a = np.asarray(image, np.float32) / 127.5 - 1.0
    dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
    a = np.pad(a, ((4, 4), (4, 4), (0, 0)), mode="edge")[4 + dy:4 + dy + h, 4 + dx:4 + dx + w]
    a = a * rng.uniform(0.92, 1.08) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    a = a + rng.normal(0.0, rng.uniform(0.0, 0.06), a.shape).astype(np.float32)
    return np.clip(a, -1.0, 1.0).transpose(2, 0, 1).astype(np.float32)


def clean(image: Any) -> np.ndarray:
    return np.asarray(image, np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def training_batch(recipe: IdentityRecipe, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Step ``step``'s pictures (N, 3, size, size) and identity labels (N,), from the seed and the
    step alone."""
    rng = np.random.default_rng([recipe.seed, step])
    images, labels = [], []
    for c in range(recipe.characters):
        attrs = character(int(rng.integers(*TRAIN_SEEDS)))
        for k, who in enumerate((attrs, sibling(attrs, rng))):
            for v in range(recipe.views):
                picture, _ = view(who, f"train/{recipe.seed}/{step}/{c}/{k}/{v}", size)
                images.append(augment(picture, rng))
                labels.append(2 * c + k)
    return np.stack(images), np.asarray(labels)


# 2. measuring: pairs of pictures and ROC AUC -----------------------------------------------------

def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """ROC AUC of telling positives (higher scores) from negatives: the chance that a random
    positive scores above a random negative, ties counting half (Mann-Whitney U)."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(pos) or not len(neg):
        raise ValueError("roc_auc needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # ties share their mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def world_pairs(base: int, count: int, *, size: int = 64, augmented: bool = False,
                seed: int = 0) -> dict[str, Any]:
    """Pictures for ``count`` characters from seed ``base`` on (two views each, one view of a
    one-attribute sibling) and the pair indices: ``positive`` (the two views of one character),
    ``negative`` (a character against the next one) and ``hard`` (a character against its sibling)."""
    rng = np.random.default_rng([seed, base, count])
    images = []
    for i in range(count):
        attrs = character(base + i)
        for k, who in enumerate((attrs, attrs, sibling(attrs, rng))):
            picture, _ = view(who, f"pairs/{base + i}/{k}", size)
            images.append(augment(picture, rng) if augmented else clean(picture))
    positive = [(3 * i, 3 * i + 1) for i in range(count)]
    negative = [(3 * i, 3 * ((i + 1) % count) + 1) for i in range(count)]
    hard = [(3 * i + 1, 3 * i + 2) for i in range(count)]
    return {"images": np.stack(images), "positive": positive, "negative": negative, "hard": hard}


def embed_arrays(net: Any, arrays: np.ndarray, batch: int = 128) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(arrays), batch):
            out.append(net(torch.from_numpy(arrays[i:i + batch])).numpy())
    return np.concatenate(out)


def pair_scores(emb: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Identity scores (cosine, the 1 - difference scale) of the pairs."""
    return np.array([float(emb[a] @ emb[b]) for a, b in pairs])


def choose_threshold(positive: np.ndarray, negative: np.ndarray) -> float:
    """The difference threshold (1 - cosine) that maximises balanced accuracy (Youden's J)."""
    diff_pos, diff_neg = 1.0 - positive, 1.0 - negative
    candidates = np.unique(np.concatenate([diff_pos, diff_neg]))
    best, best_j = float(candidates[0]), -1.0
    for t in candidates:
        j = float((diff_pos <= t).mean() - (diff_neg <= t).mean())
        if j > best_j:
            best, best_j = float(t), j
    # Halfway to the next candidate, so a value on the boundary is not decided by rounding.
    above = candidates[candidates > best]
    return float((best + above[0]) / 2) if len(above) else best


def measure(net: Any, pairs: dict[str, Any], threshold: float | None = None) -> tuple[dict[str, Any], tuple]:
    """ROC AUCs (positives against other characters, and against siblings) and, with a threshold,
    the shares of pairs at or under it; with the three arrays of pair scores."""
    emb = embed_arrays(net, pairs["images"])
    pos, neg, hard = (pair_scores(emb, pairs[k]) for k in ("positive", "negative", "hard"))
    out: dict[str, Any] = {"auc": round(roc_auc(pos, neg), 4), "auc_hard": round(roc_auc(pos, hard), 4),
                           "pairs": {"positive": len(pos), "negative": len(neg), "hard": len(hard)}}
    if threshold is not None:
        out["same_at_threshold"] = round(float((1 - pos <= threshold).mean()), 4)
        out["other_below_threshold"] = round(float((1 - neg <= threshold).mean()), 4)
        out["hard_below_threshold"] = round(float((1 - hard <= threshold).mean()), 4)
    return out, (pos, neg, hard)


def measure_generated(scorer: MiniScorer, recipe: IdentityRecipe, studio: Studio | None = None) -> dict[str, Any]:
    """The scorer on mini's own generated pictures: ``generated_characters`` held-out characters,
    each drawn by `Studio.from_pretrained("mini")` from its caption in ``generated_poses`` poses and
    backgrounds; positives are two pictures of one character, negatives one against the next."""
    if studio is None:
        from ..studio import Studio as _Studio

        studio = _Studio.from_pretrained("mini")
    from ..mini.world import BACKGROUNDS, random_pose

    size = int(studio.default_size)
    n, k = recipe.generated_characters, recipe.generated_poses
    configs = []
    for i in range(n):
        attrs = character(TEST_SEEDS + 500_000 + i)
        for v in range(k):
            rng = random.Random(f"generated/{i}/{v}")
            pose = random_pose(rng, size)
            shown = attrs.replace(background=rng.choice(list(BACKGROUNDS)))
            configs.append(studio.make_config(shown.caption(), pose=pose, seed=1000 * i + v,
                                              num_inference_steps=recipe.generated_steps))
    images = []
    for start in range(0, len(configs), 8):
        images += list(studio.run_batch(configs[start:start + 8]).images)
        log.info("generated %d/%d pictures", len(images), len(configs))
    emb = scorer.embed(images)
    positive = [(i * k + a, i * k + b) for i in range(n) for a in range(k) for b in range(a + 1, k)]
    negative = [(i * k + a, ((i + 1 + a) % n) * k + b) for i in range(n) for a in range(k) for b in range(a + 1, k)]
    pos, neg = pair_scores(emb, positive), pair_scores(emb, negative)
    return {"auc": round(roc_auc(pos, neg), 4), "pairs": {"positive": len(pos), "negative": len(neg)},
            "same_at_threshold": round(float((1 - pos <= scorer.threshold).mean()), 4),
            "other_below_threshold": round(float((1 - neg <= scorer.threshold).mean()), 4),
            "pictures": len(images), "model": "mini", "steps": recipe.generated_steps, "size": size}


# 3. training with checkpoints --------------------------------------------------------------------

def _save(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                             str(tmp)), overwrite=True)


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"), overwrite=True)


def _checkpoint(work: Path, net: Any, opt: Any, state: dict[str, Any]) -> None:
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    for idx, entry in opt.state_dict()["state"].items():
        for name, value in entry.items():
            tensors[f"opt.{idx}.{name}"] = value if hasattr(value, "shape") else __import__("torch").tensor(value)
    _save(work / "checkpoint.safetensors", tensors)
    _write_json(work / "state.json", state)


def _resume(work: Path, net: Any, opt: Any) -> dict[str, Any]:
    from ..weights import read_tensors

    if not (work / "state.json").is_file() or not (work / "checkpoint.safetensors").is_file():
        return {"step": 0, "losses": [], "seconds": 0.0}
    state = json.loads((work / "state.json").read_text(encoding="utf-8"))
    tensors = read_tensors(work / "checkpoint.safetensors", "work", what="scorer training checkpoint")
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    saved: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            saved.setdefault(int(idx), {})[name] = value
    current = opt.state_dict()
    current["state"] = saved
    opt.load_state_dict(current)
    log.info("resumed from %s at step %d", work, state["step"])
    return state


def _supcon(z: Any, labels: Any, temperature: float) -> Any:
    """Supervised contrastive loss: each picture against the batch, its own identity's other
    pictures as positives."""
    import torch

    sim = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    same = (labels[:, None] == labels[None, :]) & ~eye
    return -(log_prob.masked_fill(~same, 0.0).sum(1) / same.sum(1)).mean()


def train(recipe: IdentityRecipe, work: Path, architecture: dict[str, Any] | None = None,
          stop_after: int | None = None) -> Any:
    """Train (or resume) the embedder in ``work``; returns it in eval mode. ``stop_after``: end at that
    step of the recipe's schedule (a checkpoint), e.g. when the machine is too busy for the whole run;
    running again without it goes on from there to the same weights as an uninterrupted run."""
    import torch

    torch.manual_seed(recipe.seed)
    work.mkdir(parents=True, exist_ok=True)
    arch = {**DEFAULT_ARCHITECTURE, **(architecture or {})}
    net = build_embedder(arch)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    state = _resume(work, net, opt)
    net.train()
    t0, acc = time.time(), []
    end = recipe.steps if stop_after is None else min(recipe.steps, stop_after)
    while state["step"] < end:
        step = state["step"]
        x, y = training_batch(recipe, step, int(arch["size"]))
        warm = min(1.0, (step + 1) / recipe.warmup)
        lr = recipe.lr * warm * 0.5 * (1 + np.cos(np.pi * step / recipe.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = _supcon(net(torch.from_numpy(x)), torch.from_numpy(y), recipe.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc.append(loss.item())
        state["step"] = step + 1
        if state["step"] % recipe.checkpoint_every == 0 or state["step"] == end:
            state["seconds"] += time.time() - t0
            t0 = time.time()
            state["losses"].append([state["step"], round(float(np.mean(acc)), 5)])
            acc = []
            _checkpoint(work, net, opt, state)
            log.info("step %d/%d loss %.4f lr %.2e (%.2f s/step)", state["step"], recipe.steps,
                     state["losses"][-1][1], lr, state["seconds"] / state["step"])
    net.eval()
    net.training_state = state
    return net


def export(net: Any, recipe: IdentityRecipe, out: Path, architecture: dict[str, Any], state: dict[str, Any],
           generated: bool = True) -> dict[str, Any]:
    """Choose the threshold on the validation set, measure the held-out renders (and mini's own
    generated pictures), and write model.safetensors and identity.json to ``out``."""
    size = int(architecture["size"])
    validation = world_pairs(VALIDATION_SEEDS, recipe.validation_characters, size=size, augmented=True,
                             seed=recipe.seed)
    _, (pos, neg, hard) = measure(net, validation)
    threshold = choose_threshold(pos, np.concatenate([neg, hard]))
    val, _ = measure(net, validation, threshold)
    test, _ = measure(net, world_pairs(TEST_SEEDS, recipe.test_characters, size=size), threshold)
    out.mkdir(parents=True, exist_ok=True)  # the shipped folder is inside the package, on purpose
    _save(out / WEIGHTS_FILE, net.state_dict())
    info = {"format": 1, "scorer": "mini", "scale": "difference = 1 - cosine of the embeddings",
            "architecture": architecture, "threshold": round(threshold, 6),
            "threshold_chosen_on": "validation renders (augmented), positives against other characters and "
                                   "one-attribute siblings, maximising balanced accuracy",
            "validation": val, "held_out_renders": test, "recipe": asdict(recipe),
            "training": {"steps": state["step"], "of_schedule": recipe.steps, "seconds": round(state["seconds"], 1),
                         "losses": state["losses"]},
            "seeds": {"train": list(TRAIN_SEEDS), "validation": VALIDATION_SEEDS, "test": TEST_SEEDS}}
    _write_json(out / INFO_FILE, info)
    if generated:
        info["generated"] = measure_generated(MiniScorer(out), recipe)
        _write_json(out / INFO_FILE, info)
    log.info("wrote %s: threshold %.4f, held-out AUC %.4f (hard %.4f)%s", out, threshold, test["auc"],
             test["auc_hard"], f", generated AUC {info['generated']['auc']:.4f}" if generated else "")
    return info


def main(argv: list[str] | None = None) -> int:
    """python -m charstudio.identity.train --out FOLDER [--work FOLDER]: train mini's identity scorer."""
    import torch

    p = argparse.ArgumentParser(prog="python -m charstudio.identity.train", description=main.__doc__)
    p.add_argument("--out", required=True, help="where model.safetensors and identity.json go")
    p.add_argument("--work", default="runs/identity", help="checkpoints (a killed run resumes from them)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--skip-generated", action="store_true", help="do not measure on mini's generated pictures")
    p.add_argument("--stop-after", type=int, default=None,
                   help="end at this step of the schedule (resumable; identity.json records it)")
    for f in fields(IdentityRecipe):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    recipe = IdentityRecipe(**{f.name: getattr(args, f.name) for f in fields(IdentityRecipe)})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "recipe.json"
    if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) != asdict(recipe):
        from ..errors import ConfigError

        raise ConfigError("work", str(work), "a new --work folder, or the recipe it was started with "
                          f"({saved.name}); a different recipe would not resume the same run")
    _write_json(saved, asdict(recipe))
    net = train(recipe, work, stop_after=args.stop_after)
    export(net, recipe, Path(args.out), dict(DEFAULT_ARCHITECTURE), net.training_state,
           generated=not args.skip_generated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
