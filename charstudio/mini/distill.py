"""A 4-step `mini`: latent consistency distillation into a LoRA (LCM-LoRA's recipe, mini as teacher).

    python -m charstudio.mini.distill --work runs/mini_lcm --out charstudio/data/mini/loras/lcm

The student is mini's UNet with a LoRA on its attention, feed-forward, projection, convolution and
time-embedding layers; the teacher is mini itself (frozen) with its classifier-free guidance. Each
step (Luo et al. 2023, "LCM-LoRA"; consistency distillation over a 50-step DDIM grid, skipping 20
timesteps, as diffusers' LCMScheduler samples it with ``original_inference_steps=50``):

1. noise a latent of mini's world to a grid timestep t (19, 39, ... 999);
2. the student predicts the clean latent from x_t; with the LCM boundary scalings (c_skip, c_out,
   timestep_scaling 10, sigma_data 0.5) that is its consistency output;
3. the teacher takes one guided DDIM step from x_t to t - 20: mini's CFG (3) with its CFG rescale
   (0.7) on unposed samples, none on posed ones, exactly as mini's recipes draw;
4. the target is the student's own consistency output at (x_{t-20}, t - 20), without gradients;
5. the loss is the pseudo-Huber distance (c = 0.001) between the two.

The OpenPose ControlNet (frozen) feeds 70% of the samples, as in mini's own training, so poses
hold at 4 steps. Everything is checkpointed every ``--checkpoint-every`` steps into ``--work``
(safetensors and JSON, nothing pickled): running the same command again resumes. Every
``--export-every`` steps the LoRA is exported to ``work/export`` so it can be tried mid-run; at the
end it is written to ``--out`` (never over an existing LoRA unless ``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError
from ..training import write_json
from .dataset import make_dataset, sample_attributes, to_tensor

log = logging.getLogger(__name__)

MINI_DIR = Path(__file__).resolve().parent.parent / "data" / "mini"
LCM_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv"]
ADAPTER = "lcm"
LORA_NAME = "mini_lcm"


@dataclass
class DistillRecipe:
    seed: int = 0
    samples: int = 4000  # world pictures (mini's training draw, its first `samples`)
    size: int = 64
    steps: int = 2000
    batch: int = 16
    lr: float = 3e-4
    warmup: int = 50
    rank: int = 16
    alpha: float = 16.0
    guidance: float = 3.0  # mini's CFG (presets.MINI_GUIDANCE)
    guidance_rescale: float = 0.7  # mini's CFG rescale on unposed pictures
    control_dropout: float = 0.3  # share of samples without the ControlNet, as in mini's training
    solver_steps: int = 50  # the DDIM grid (LCMScheduler's original_inference_steps)
    timestep_scaling: float = 10.0
    huber_c: float = 0.001
    checkpoint_every: int = 50
    export_every: int = 250
    threads: int | None = None


@dataclass
class DistillState:
    step: int = 0
    losses: list = field(default_factory=list)  # (step, mean loss over the last 10)
    seconds: float = 0.0


def boundary_scalings(t: Any, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[Any, Any]:
    """LCM's c_skip and c_out at timestep t (diffusers' LCMScheduler uses the same)."""
    scaled = t * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _rescale(guided: Any, cond: Any, phi: float) -> Any:
    """diffusers' CFG rescale (Lin et al. 2023): the guided prediction's std brought back to the
    conditional one's, mixed by phi."""
    std_c = cond.std(dim=list(range(1, cond.ndim)), keepdim=True)
    std_g = guided.std(dim=list(range(1, guided.ndim)), keepdim=True)
    return phi * guided * (std_c / std_g) + (1 - phi) * guided


def _components(device: str = "cpu") -> dict[str, Any]:
    import torch
    from diffusers import ControlNetModel

    from ..models.loading import load_components, resolve_model

    comps = load_components(resolve_model("mini"), dtype=torch.float32)
    if comps.get("controlnet") is None:
        comps["controlnet"] = ControlNetModel.from_pretrained(MINI_DIR / "controlnet")
    for name in ("unet", "controlnet", "text_encoder", "vae"):
        comps[name].to(device).eval().requires_grad_(False)
    return comps


def _data(recipe: DistillRecipe, work: Path, comps: dict) -> dict[str, Any]:
    """The world's pictures (latent means and stds through mini's VAE), controls and attributes, cached."""
    import torch

    from .train import MiniRecipe, load_tensors, save_tensors

    path = work / "data.safetensors"
    if not path.exists():
        mini = MiniRecipe(seed=recipe.seed, samples=recipe.samples, size=recipe.size)
        data = make_dataset(mini)
        means, stds = [], []
        with torch.no_grad():
            for i in range(0, recipe.samples, 256):
                dist = comps["vae"].encode(to_tensor(data["images"][i:i + 256])).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
        tensors = {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous(),
                   "controls": torch.from_numpy(data["controls"]).contiguous()}
        save_tensors(path, tensors)
    out = dict(load_tensors(path))
    out["attrs"] = [sample_attributes(_mini_recipe(recipe), i) for i in range(recipe.samples)]
    return out


def _mini_recipe(recipe: DistillRecipe) -> Any:
    from .train import MiniRecipe

    return MiniRecipe(seed=recipe.seed, samples=recipe.samples, size=recipe.size)


def _encode(comps: dict, captions: list[str]) -> Any:
    tok = comps["tokenizer"]
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return comps["text_encoder"](ids)[0]


def _v(unet: Any, cn: Any, x: Any, t: Any, text: Any, cond: Any, keep: Any) -> Any:
    """mini's v-prediction at (x, t), with the ControlNet's residuals on the kept samples."""
    down, mid = cn(x, t, text, cond, return_dict=False)
    k = keep.view(-1, 1, 1, 1)
    return unet(x, t, text, down_block_additional_residuals=[d * k for d in down],
                mid_block_additional_residual=mid * k).sample


def distill_step(recipe: DistillRecipe, comps: dict, teacher: Any, student: Any, batch: dict, gen: Any,
                 alphas: Any) -> Any:
    """One consistency-distillation loss (see the module's steps 1-5)."""
    import torch

    cn = comps["controlnet"]
    z, text, empty, cond, keep = batch["z"], batch["text"], batch["empty"], batch["cond"], batch["keep"]
    skip = 1000 // recipe.solver_steps
    index = torch.randint(0, recipe.solver_steps, (len(z),), generator=gen)
    t = (index + 1) * skip - 1
    t_prev = (t - skip).clamp(min=0)
    a_t, a_p = alphas[t].view(-1, 1, 1, 1), alphas[t_prev].view(-1, 1, 1, 1)
    noise = torch.randn(z.shape, generator=gen)
    x_t = a_t.sqrt() * z + (1 - a_t).sqrt() * noise

    def consistency(v: Any, x: Any, tt: Any, a: Any) -> Any:
        x0 = a.sqrt() * x - (1 - a).sqrt() * v
        c_skip, c_out = boundary_scalings(tt.float(), timestep_scaling=recipe.timestep_scaling)
        return c_skip.view(-1, 1, 1, 1) * x + c_out.view(-1, 1, 1, 1) * x0

    pred = consistency(_v(student, cn, x_t, t, text, cond, keep), x_t, t, a_t)
    with torch.no_grad():
        v_c = _v(teacher, cn, x_t, t, text, cond, keep)
        v_u = _v(teacher, cn, x_t, t, empty, cond, keep)
        v = v_u + recipe.guidance * (v_c - v_u)
        if recipe.guidance_rescale:  # mini's recipes rescale only unposed pictures (no rescale in ControlNet pipes)
            v = torch.where(keep.view(-1, 1, 1, 1) > 0, v, _rescale(v, v_c, recipe.guidance_rescale))
        x0 = a_t.sqrt() * x_t - (1 - a_t).sqrt() * v
        eps = a_t.sqrt() * v + (1 - a_t).sqrt() * x_t
        x_prev = a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps
        target = consistency(_v(student, cn, x_prev, t_prev, text, cond, keep), x_prev, t_prev, a_p)
    c = recipe.huber_c
    return (torch.sqrt((pred.float() - target.float()) ** 2 + c**2) - c).mean()


def _batch(recipe: DistillRecipe, data: dict, comps: dict, step: int, scale: float, empty: Any) -> tuple[dict, Any]:
    import torch

    rng = np.random.default_rng([recipe.seed, 38, step])
    idx = rng.integers(0, recipe.samples, recipe.batch)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    z = (data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, generator=gen)) * scale
    words = random.Random(int(rng.integers(2**31)))
    captions = [data["attrs"][i].caption_variant(words) for i in idx]
    controls = data["controls"][idx].numpy()
    with torch.no_grad():
        text = _encode(comps, captions)
    batch = {"z": z, "text": text, "empty": empty.expand(len(idx), -1, -1),
             "cond": to_tensor(controls) * 0.5 + 0.5,
             "keep": torch.from_numpy(rng.random(len(idx)) >= recipe.control_dropout).float()}
    return batch, gen


def _lr(recipe: DistillRecipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def distill(recipe: DistillRecipe, work: str | Path, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Run (or resume) the distillation in ``work``; export the LoRA to ``out`` (default work/final)."""
    import copy

    import torch
    from peft import LoraConfig

    from .train import load_optimizer, load_tensors, save_optimizer, save_tensors

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(out) if out else work / "final"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out} already holds a LoRA: pass --overwrite to replace it, or another --out")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    write_json(work / "recipe.json", asdict(recipe))
    state = DistillState(**json.loads((work / "state.json").read_text())) if (work / "state.json").exists() \
        else DistillState()
    comps = _components()
    teacher = comps["unet"]
    student = copy.deepcopy(teacher)
    student.add_adapter(LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, init_lora_weights="gaussian",
                                   target_modules=LCM_TARGETS), adapter_name=ADAPTER)
    lora_params = [p for n, p in student.named_parameters() if "lora_" in n]
    for p in lora_params:
        p.requires_grad_(True)
    if (work / "lora.safetensors").exists():
        saved = load_tensors(work / "lora.safetensors")
        with torch.no_grad():
            for i, p in enumerate(lora_params):
                p.copy_(saved[str(i)])
    opt = torch.optim.AdamW(lora_params, lr=recipe.lr, weight_decay=0.0)
    if (work / "opt.safetensors").exists():
        load_optimizer(work / "opt", opt)
    data = _data(recipe, work, comps)
    scale = float(comps["vae"].config.scaling_factor)
    alphas = comps["scheduler"].alphas_cumprod.float()
    with torch.no_grad():
        empty = _encode(comps, [""])
    student.train()
    acc: list[float] = []
    t0 = time.time()

    def save() -> None:
        save_tensors(work / "lora.safetensors", {str(i): p for i, p in enumerate(lora_params)})
        save_optimizer(work / "opt", opt)
        write_json(work / "state.json", asdict(state))

    while state.step < recipe.steps:
        batch, gen = _batch(recipe, data, comps, state.step, scale, empty)
        for g in opt.param_groups:
            g["lr"] = _lr(recipe, state.step)
        loss = distill_step(recipe, comps, teacher, student, batch, gen, alphas)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params, 1.0)
        opt.step()
        acc.append(loss.item())
        state.step += 1
        if state.step % 10 == 0:
            state.losses.append((state.step, float(np.mean(acc))))
            acc = []
        if state.step % recipe.checkpoint_every == 0 or state.step == recipe.steps:
            state.seconds += time.time() - t0
            t0 = time.time()
            save()
            log.info("distill step %d/%d loss %.5f (%.2f s/step)", state.step, recipe.steps,
                     state.losses[-1][1] if state.losses else float(loss), state.seconds / max(1, state.step))
        if state.step % recipe.export_every == 0 and state.step < recipe.steps:
            _export(student, work / "export", recipe, state, overwrite=True)
    student.eval()
    return _export(student, out, recipe, state, overwrite=overwrite)


def _export(student: Any, folder: Path, recipe: DistillRecipe, state: DistillState, *, overwrite: bool) -> Path:
    """The LoRA in both formats (diffusers' and kohya's), with the recipe and losses beside it,
    staged and swapped into place."""
    from ..lora.formats import save_lora

    staged = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staged, ignore_errors=True)
    save_lora(student, None, staged, LORA_NAME, adapter_name=ADAPTER, overwrite=True,
              kohya_metadata={"ss_training_comment": "charstudio.mini.distill: LCM consistency distillation of mini"})
    write_json(staged / "distill_config.json", {"recipe": asdict(recipe), "step": state.step,
                                                "seconds": round(state.seconds, 1), "losses": state.losses})
    if folder.exists():
        if not overwrite:
            raise OutputError(f"{folder} exists: pass --overwrite to replace it")
        shutil.rmtree(folder)
    staged.replace(folder)
    log.info("exported the LoRA (step %d) to %s", state.step, folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m charstudio.mini.distill", description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="working folder (checkpoints; the same command resumes)")
    parser.add_argument("--out", default=None, help="where the LoRA goes (default WORK/final)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing LoRA at --out")
    defaults = DistillRecipe()
    for name, value in asdict(defaults).items():
        if name == "threads":
            parser.add_argument("--threads", type=int, default=None)
        else:
            parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = DistillRecipe(**{k: getattr(args, k) for k in asdict(defaults)})
    try:
        path = distill(recipe, args.work, args.out, overwrite=args.overwrite)
    except OutputError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"LoRA written to {path}")  # noqa: T201 (a module command's output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
