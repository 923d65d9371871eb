"""The training recipe of the `mini` model: rebuilds its weights from a seed, on a CPU or a GPU.

    python -m charstudio.mini.train --work runs/mini --out charstudio/data/mini

Phases, each checkpointed every ``--checkpoint-every`` steps into ``--work`` so that running the
same command again resumes where an interrupted run stopped:

1. data  - render ``--samples`` characters of `charstudio.mini.world` (picture, OpenPose control
           image, caption), cached as ``data.npz``;
2. vae   - train the AutoencoderKL (L1 + MSE + a tiny KL term);
3. latents - encode every picture once (mean and std of the posterior);
4. unet  - train text encoder, UNet and ControlNet together on those latents: v-prediction,
           the picture error weighted min(SNR, 5) + 1 and toward the figure's cells, 10%
           empty captions (for guidance), 30% of samples without the ControlNet (so the UNet
           alone draws too), EMA weights;
5. export - write a diffusers folder (plus ``controlnet/``) of safetensors to ``--out``, with
           ``mini_report.json`` holding the losses and the behaviour scores.

Nothing here is pickled: weights and optimizer state are safetensors, the rest JSON. The data
(``mini.dataset``), the schedules (``mini.schedule``) and the export (``mini.export``) live
beside this module.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io_utils import atomic_write
from ..training import write_json
from .dataset import add_strokes, figure_mask, make_dataset, sample_attributes, to_tensor
from .dataset import latent_weight as _latent_weight
from .export import export
from .schedule import apply_snr_shift, loss_weight, lr_factor
from .schedule import shifted_betas  # noqa: F401  (public here since the recipe began)

log = logging.getLogger(__name__)


@dataclass
class MiniRecipe:
    seed: int = 0
    samples: int = 16000
    size: int = 64
    vae_steps: int = 2100
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_foreground_weight: float = 4.0
    # Share of VAE training pictures overdrawn with random thin striped strokes in any hue, so the
    # VAE is a general codec (as SD's is) and can carry details the world never draws, such as
    # the held-out orange striped scarf. 0 reproduces the shipped weights.
    vae_stroke_share: float = 0.0
    unet_steps: int = 4000
    unet_batch: int = 32
    unet_lr: float = 4e-4
    text_lr_scale: float = 3.0  # the text encoder starts from nothing: it gets a larger learning rate
    token_embedding_std: float = 0.5  # CLIP's 0.02 leaves words nearly indistinguishable for too long
    warmup: int = 150
    caption_dropout: float = 0.1
    control_dropout: float = 0.3
    ema_decay: float = 0.999
    snr_gamma: float = 5.0
    # Extra weight of the latent cells the figure covers in the UNet loss (as the VAE's
    # foreground weight): the flat background is most of every picture and easy to denoise.
    # 4 (a cell the figure fills counts 5x) is what the shipped weights were trained with.
    unet_foreground_weight: float = 4.0
    # A folder this recipe exported: start from its VAE, text encoder, UNet and ControlNet and run
    # only the UNet phase (a fine-tuning stage; the VAE phase is skipped). "" trains from scratch.
    # ``size`` may be a whole multiple of the folder's: the VAE is kept and the UNet learns the
    # larger latents (e.g. a 128 px stage from a 64 px run).
    init_from: str = ""
    # Divide the signal-to-noise ratio of SD's schedule by this at every timestep (exported as the
    # scheduler's trained_betas). Latents k times larger carry each feature in k^2 cells, so the
    # same noise hides it k^2 times less well: without a shift, a 128 px stage learns to read the
    # picture's overall colours from its input even at the noisiest steps, finds none in pure
    # noise, and every seed draws the same colours. A stage at k times the size of a run on SD's
    # schedule should use k^2; 1 keeps SD's schedule.
    snr_shift: float = 1.0
    checkpoint_every: int = 100
    evaluate: int = 1  # 1: measure the behaviours (charstudio.mini.evaluate) and add them to mini_report.json
    threads: int | None = None


@dataclass
class TrainState:
    """Where a mini training run is (saved as work/state.json, so a killed run resumes)."""

    phase: str = "data"
    step: int = 0
    vae_losses: list = field(default_factory=list)  # (step, loss) every 10 steps
    unet_losses: list = field(default_factory=list)
    scaling_factor: float | None = None
    seconds: dict = field(default_factory=dict)


def save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp)),
                 overwrite=True)


def load_tensors(path: Path) -> dict[str, Any]:
    from ..weights import read_tensors

    return read_tensors(path, "work", what="training work file", advice="start the run again in a new --work folder")


def _save_state(work: Path, state: TrainState) -> None:
    write_json(work / "state.json", asdict(state))


def save_optimizer(path: Path, opt: Any) -> None:
    from ..training import flatten_optimizer

    tensors, meta = flatten_optimizer(opt.state_dict())
    save_tensors(path.with_suffix(".safetensors"), tensors)
    write_json(path.with_suffix(".json"), meta)


def load_optimizer(path: Path, opt: Any) -> None:
    """Restore the per-parameter state (moments, step counts); the groups' settings stay as built,
    so a recipe may regroup parameters as long as their order is unchanged."""
    from ..training import unflatten_optimizer

    meta = json.loads(path.with_suffix(".json").read_text())
    saved = unflatten_optimizer(load_tensors(path.with_suffix(".safetensors")), meta)
    current = opt.state_dict()
    if len(saved["state"]) > sum(len(g["params"]) for g in current["param_groups"]):
        raise ValueError(f"{path}: optimizer state for more parameters than the model has")
    current["state"] = saved["state"]
    opt.load_state_dict(current)


class _Bookkeeper:
    """Per-step bookkeeping of a phase: the mean loss every 10 steps, and every
    ``checkpoint_every`` steps (and at the end) a checkpoint, the state and a log line."""

    def __init__(self, recipe: MiniRecipe, work: Path, state: TrainState, phase: str, total: int, losses: list):
        self.recipe, self.work, self.state, self.phase, self.total, self.losses = recipe, work, state, phase, total, losses
        self.acc: list[float] = []
        self.t0 = time.time()

    def step(self, loss: float, save: Any) -> None:
        state = self.state
        self.acc.append(loss)
        state.step += 1
        if state.step % 10 == 0:
            self.losses.append((state.step, float(np.mean(self.acc))))
            self.acc = []
        if state.step % self.recipe.checkpoint_every == 0 or state.step == self.total:
            state.seconds[self.phase] = state.seconds.get(self.phase, 0.0) + time.time() - self.t0
            self.t0 = time.time()
            save()
            _save_state(self.work, state)
            log.info("%s step %d/%d loss %.4f (%.2f s/step)", self.phase, state.step, self.total, loss,
                     state.seconds[self.phase] / state.step)


def train_vae(recipe: MiniRecipe, work: Path, data: dict, state: TrainState, comps: dict) -> None:
    import torch

    vae = comps["vae"]
    if (work / "vae.safetensors").exists():
        vae.load_state_dict(load_tensors(work / "vae.safetensors"))
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    if (work / "vae_opt.safetensors").exists():
        load_optimizer(work / "vae_opt", opt)
    vae.train()
    n = len(data["images"])
    book = _Bookkeeper(recipe, work, state, "vae", recipe.vae_steps, state.vae_losses)
    while state.step < recipe.vae_steps:
        step = state.step
        rng = np.random.default_rng([recipe.seed, 1, step])
        batch = data["images"][rng.integers(0, n, recipe.vae_batch)]
        if recipe.vae_stroke_share > 0:
            batch = add_strokes(batch, rng, recipe.vae_stroke_share)
        x = to_tensor(batch)
        for g in opt.param_groups:
            g["lr"] = recipe.vae_lr * lr_factor(step, recipe.vae_steps, recipe.warmup)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        out = vae.decode(z).sample
        # The figure is a small part of a flat background: weight its pixels up, or the VAE learns
        # the background well and the character's colours badly.
        w = 1.0 + recipe.vae_foreground_weight * figure_mask(x)
        loss = (w * (out - x).abs()).mean() + (w * (out - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        book.step(loss.item(), lambda: (save_tensors(work / "vae.safetensors", vae.state_dict()),
                                        save_optimizer(work / "vae_opt", opt)))
    vae.eval()


def encode_latents(recipe: MiniRecipe, work: Path, data: dict, comps: dict) -> dict[str, Any]:
    import torch

    path = work / "latents.safetensors"
    if path.exists():
        return load_tensors(path)
    vae = comps["vae"]
    vae.load_state_dict(load_tensors(work / "vae.safetensors"))
    vae.eval()
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(data["images"]), 256):
            dist = vae.encode(to_tensor(data["images"][i:i + 256])).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    out = {"mean": torch.cat(means), "std": torch.cat(stds)}
    save_tensors(path, out)
    return out


def _spread_token_embeddings(text_encoder: Any, std: float) -> float:
    """Give the token embeddings at least ``std`` spread, rescaling them so what was learned stays;
    returns the factor applied (1.0 when they were spread enough)."""
    import torch

    weight = text_encoder.get_input_embeddings().weight
    now = float(weight.detach().std())
    if now >= 0.9 * std:
        return 1.0
    log.info("token embeddings: std %.3f -> %.3f", now, std)
    with torch.no_grad():
        weight.mul_(std / now)
    return std / now


def _encode_text(comps: dict, captions: list[str]) -> Any:
    tok = comps["tokenizer"]
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return comps["text_encoder"](ids)[0]


def _resume_unet_parts(recipe: MiniRecipe, work: Path, parts: dict) -> tuple[list, list]:
    """Load the UNet phase's parts (text encoder, UNet, ControlNet) from ``work`` where saved;
    return their parameters and the EMA copies (saved ones, else fresh), spreading the token
    embeddings (and their EMA copy) to ``token_embedding_std``."""
    for name, m in parts.items():
        if (work / f"{name}.safetensors").exists():
            m.load_state_dict(load_tensors(work / f"{name}.safetensors"))
    te = parts["text_encoder"]
    factor = _spread_token_embeddings(te, recipe.token_embedding_std)
    params = [p for m in parts.values() for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    if (work / "ema.safetensors").exists():
        saved = load_tensors(work / "ema.safetensors")
        ema = [saved[str(i)] for i in range(len(params))]
        embedding = te.get_input_embeddings().weight
        for i, p in enumerate(params):
            if p is embedding:
                ema[i] = ema[i] * factor
    return params, ema


def train_unet(recipe: MiniRecipe, work: Path, data: dict, latents: dict, state: TrainState, comps: dict) -> dict:
    import torch
    from diffusers import DDPMScheduler

    te, unet, cn = comps["text_encoder"], comps["unet"], comps["controlnet"]
    parts = {"text_encoder": te, "unet": unet, "controlnet": cn}
    params, ema = _resume_unet_parts(recipe, work, parts)
    text_params = list(te.parameters())
    other = [p for m in (unet, cn) for p in m.parameters()]
    opt = torch.optim.AdamW([{"params": text_params, "lr_scale": recipe.text_lr_scale},
                             {"params": other, "lr_scale": 1.0}], lr=recipe.unet_lr, weight_decay=1e-2)
    if (work / "unet_opt.safetensors").exists():
        load_optimizer(work / "unet_opt", opt)
    sched = DDPMScheduler.from_config(comps["scheduler"].config)
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    target = sched.get_velocity  # mini is a v-prediction model (see `mini.build_mini_components`)
    scale = state.scaling_factor
    n = len(data["images"])
    attrs = [sample_attributes(recipe, i) for i in range(n)]
    for m in parts.values():
        m.train()
    book = _Bookkeeper(recipe, work, state, "unet", recipe.unet_steps, state.unet_losses)

    def save() -> None:
        for name, m in parts.items():
            save_tensors(work / f"{name}.safetensors", m.state_dict())
        save_tensors(work / "ema.safetensors", {str(i): e for i, e in enumerate(ema)})
        save_optimizer(work / "unet_opt", opt)

    while state.step < recipe.unet_steps:
        step = state.step
        rng = np.random.default_rng([recipe.seed, 2, step])
        idx = rng.integers(0, n, recipe.unet_batch)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        z = (latents["mean"][idx] + latents["std"][idx] * torch.randn(latents["mean"][idx].shape, generator=gen)) * scale
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = sched.add_noise(z, noise, t)
        words = random.Random(int(rng.integers(2**31)))
        captions = [("" if rng.random() < recipe.caption_dropout else attrs[i].caption_variant(words)) for i in idx]
        cond = to_tensor(data["controls"][idx]) * 0.5 + 0.5  # the pipelines feed control images in [0, 1]
        keep = torch.from_numpy(rng.random(len(idx)) >= recipe.control_dropout).float()
        for g in opt.param_groups:
            g["lr"] = recipe.unet_lr * g["lr_scale"] * lr_factor(step, recipe.unet_steps, recipe.warmup)
        text = _encode_text(comps, captions)
        down, mid = cn(noisy, t, text, cond, return_dict=False)
        k = keep.view(-1, 1, 1, 1)
        pred = unet(noisy, t, text, down_block_additional_residuals=[d * k for d in down],
                    mid_block_additional_residual=mid * k).sample
        err = (pred - target(z, noise, t)) ** 2
        if recipe.unet_foreground_weight > 0:
            err = err * _latent_weight(data["images"][idx], err.shape[-1], recipe.unet_foreground_weight)
        loss = (loss_weight(snr[t], recipe.snr_gamma) * err.mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        book.step(loss.item(), save)
    # Ship the EMA weights.
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    for m in parts.values():
        m.eval()
    return parts


_INIT_FILES = {"vae": "vae/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
               "unet": "unet/diffusion_pytorch_model.safetensors",
               "controlnet": "controlnet/diffusion_pytorch_model.safetensors"}


def _start_from(recipe: MiniRecipe, work: Path, state: TrainState, comps: dict) -> None:
    """Seed a fresh work folder with the weights of ``recipe.init_from`` as if the VAE phase had
    just finished: the UNet phase then fine-tunes them (and resumes like any run)."""
    from ..errors import ConfigError
    from ..weights import read_tensors

    folder = Path(recipe.init_from).expanduser()
    missing = [rel for rel in [*_INIT_FILES.values(), "vae/config.json", "tokenizer/tokenizer.json"]
               if not (folder / rel).is_file()]
    if missing:
        raise ConfigError("init_from", str(folder), f"a folder this recipe exported (it lacks {', '.join(missing)})")
    vocab = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    if vocab != comps["tokenizer"].get_vocab():
        raise ConfigError("init_from", str(folder), "a model with this version's tokenizer (its vocabulary differs)")
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    trained = int(vae_config.get("sample_size") or 0)
    if not trained or recipe.size % trained:  # (a smaller size is never a multiple)
        raise ConfigError("size", recipe.size, f"the size {recipe.init_from} was trained at ({trained}) or a "
                          f"multiple of it")
    if recipe.size != trained:
        # Every part is convolutional: the VAE carries over as it is (the world drawn larger is
        # still the world), and the UNet and ControlNet learn the larger latents in this stage.
        log.info("fine-tuning at %d px from a model trained at %d px", recipe.size, trained)
    for name, rel in _INIT_FILES.items():
        weights = read_tensors(folder / rel, "init_from", what=f"{name} weight file",
                               advice="export the model again, or start from another one")
        try:
            comps[name].load_state_dict(weights)
        except RuntimeError as e:
            raise ConfigError("init_from", str(folder), f"a model of this recipe's architecture ({name}: "
                              f"{str(e).splitlines()[0]})") from None
        save_tensors(work / f"{name}.safetensors", weights)
    report = folder / "mini_report.json"
    lineage = json.loads(report.read_text()) if report.is_file() else {}
    lineage = {k: lineage[k] for k in ("recipe", "scaling_factor", "train_seconds", "vae_loss", "unet_loss",
                                       "behaviour", "init") if k in lineage}
    write_json(work / "init_report.json", {"from": str(folder), **lineage})
    state.phase, state.step, state.scaling_factor = "unet", 0, float(vae_config["scaling_factor"])
    _save_state(work, state)
    log.info("starting from %s: VAE phase skipped, fine-tuning the UNet phase", folder)


def train_mini(recipe: MiniRecipe, work: str | Path, out: str | Path) -> Path:
    """Run (or resume) every phase; return the exported folder."""
    import torch

    from .architecture import build_mini_components

    work, out = Path(work), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    saved_recipe = work / "recipe.json"
    if saved_recipe.exists():
        before = json.loads(saved_recipe.read_text())
        if before != asdict(recipe):
            changed = sorted(k for k in before if before.get(k) != asdict(recipe).get(k))
            log.warning("recipe differs from the one this work folder started with (%s); continuing", changed)
    write_json(saved_recipe, asdict(recipe))
    state = TrainState(**json.loads((work / "state.json").read_text())) if (work / "state.json").exists() else TrainState()
    torch.manual_seed(recipe.seed)
    comps = build_mini_components(recipe.seed)
    apply_snr_shift(recipe, comps)

    if recipe.init_from and not (work / "state.json").exists():
        _start_from(recipe, work, state, comps)

    data_path = work / "data.npz"
    if data_path.exists():
        with np.load(data_path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    else:
        t0 = time.time()
        data = make_dataset(recipe)
        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
                np.savez(f, **data)

        atomic_write(data_path, write_npz, overwrite=True)
        state.seconds["data"] = time.time() - t0
    if state.phase == "data":
        state.phase, state.step = "vae", 0
        _save_state(work, state)
    if state.phase == "vae":
        train_vae(recipe, work, data, state, comps)
        state.phase, state.step = "unet", 0
        _save_state(work, state)
    comps["vae"].load_state_dict(load_tensors(work / "vae.safetensors"))
    comps["vae"].eval()
    latents = encode_latents(recipe, work, data, comps)
    if state.scaling_factor is None:
        state.scaling_factor = float(1.0 / latents["mean"].std())
        _save_state(work, state)
    train_unet(recipe, work, data, latents, state, comps)  # when already done: loads the final weights and EMA
    state.phase = "done"
    _save_state(work, state)
    out = export(recipe, work, out, state, comps)
    if recipe.evaluate:
        from .evaluate import record_behaviour  # evaluate never imports this module: no cycle

        record_behaviour(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m charstudio.mini.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the dataset cache and checkpoints (resumes from it)")
    p.add_argument("--out", required=True, help="where to write the diffusers folder")
    for f in MiniRecipe.__dataclass_fields__.values():
        kind = {"float": float, "str": str}.get(f.type, int)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    values = {k: v for k, v in vars(args).items() if k not in ("work", "out") and v is not None}
    train_mini(MiniRecipe(**values), args.work, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
