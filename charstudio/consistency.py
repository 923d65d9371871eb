"""Keeping one character the same across images: character sheets and the mechanisms behind them.

A sheet is one character card drawn in N poses with the OpenPose ControlNet. Four mechanisms,
each switchable, pull the images toward one design:

(a) same initial noise: every pose starts from the same seed's latents (``same_noise``);
(b) the card's LoRA, when the card names one and the Studio can load LoRAs (``use_lora``);
(c) reference attention (``reference_strength``): while the anchor image (the first pose, or a
    user-given ``reference_image``) is generated, the input of every UNet self-attention layer
    is recorded at every step; the other images' self-attention then also attends to those
    anchor tokens (keys and values computed from them with the layer's own projections). The
    output is ``lerp(own attention, attention over own + anchor tokens, strength)``. It is
    implemented as diffusers attention processors, so it works with any SD 1.x UNet, and is
    training-free. At strength 0 the processors are not installed at all;
(d) IP-Adapter with a reference image, when its weights are available (``ip_adapter``).

`score` measures the result: the mean pairwise cosine similarity of CLIP image embeddings.

Under ``accelerate launch`` the poses of a sheet (and the sheets of a batch) are split across
processes; each process recomputes the anchor it needs, so results equal a single-process run.

Memory note for (c): the recorded anchor states are kept for every step. For SD 1.5 at 512x512
with CFG that is about 46 MB per step in fp16 (1.2 GB for 25 steps); pass
``reference_offload=True`` to keep them in CPU memory instead.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import ConfigError, ModelLoadError
from .result import Result

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "openai/clip-vit-large-patch14"


# ---------------------------------------------------------------------------------------------
# (c) Reference attention
# ---------------------------------------------------------------------------------------------
class ReferenceBank:
    """Anchor self-attention inputs recorded per layer and per UNet call, and the read mode.

    ``record()`` starts a fresh recording; ``read()`` makes every following UNet call use the
    recording of the same layer at the same call index (call index == denoising step, since the
    pipelines call the UNet once per step with the CFG halves batched).
    """

    def __init__(self, strength: float, offload: bool = False):
        self.strength = float(strength)
        self.offload = offload
        self.mode = "off"
        self.states: dict[str, list[Any]] = {}
        self._calls: dict[str, int] = {}
        self._warned = False

    def record(self) -> None:
        """Record the next run as the anchor."""
        self.mode, self.states, self._calls = "record", {}, {}

    def read(self) -> None:
        """Share the recorded anchor into the next run(s); each run starts at step 0."""
        if not self.states:
            raise ConfigError("reference", "nothing recorded", "record an anchor run before reading")
        self.mode, self._calls = "read", {}

    def off(self) -> None:
        """Behave exactly like the original processors."""
        self.mode = "off"

    @property
    def recorded_steps(self) -> int:
        return max((len(v) for v in self.states.values()), default=0)

    def _next(self, name: str) -> Any:
        i = self._calls.get(name, 0)
        self._calls[name] = i + 1
        states = self.states.get(name, [])
        if i < len(states):
            return states[i]
        if not self._warned:
            self._warned = True
            logger.warning("reference attention: the run has more UNet calls than the anchor recorded (%d); "
                           "later steps run without the reference", len(states))
        return None


class ReferenceAttnProcessor:
    """Wraps a UNet self-attention processor: records its input, or attends to the anchor too."""

    def __init__(self, name: str, base: Any, bank: ReferenceBank):
        self.name = name
        self.base = base
        self.bank = bank

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        bank = self.bank
        if encoder_hidden_states is None and hidden_states.ndim == 3:
            if bank.mode == "record":
                bank.states.setdefault(self.name, []).append(
                    hidden_states.detach().to("cpu" if bank.offload else hidden_states.device, copy=True))
            elif bank.mode == "read":
                ref = bank._next(self.name)
                usable = (ref is not None and bank.strength > 0 and attention_mask is None
                          and attn.spatial_norm is None and attn.group_norm is None
                          and ref.shape == hidden_states.shape)
                if usable:
                    return self._shared(attn, hidden_states, ref.to(hidden_states.device, hidden_states.dtype))
        return self.base(attn, hidden_states, *args, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, temb=temb, **kwargs)

    def _shared(self, attn: Any, hidden: Any, ref: Any) -> Any:
        import torch
        import torch.nn.functional as F

        b = hidden.shape[0]
        query, key, value = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
        key_ref, value_ref = attn.to_k(ref), attn.to_v(ref)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: Any) -> Any:
            return x.view(b, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value, key_ref, value_ref = map(heads, (query, key, value, key_ref, value_ref))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key, key_ref = attn.norm_k(key), attn.norm_k(key_ref)
        own = F.scaled_dot_product_attention(query, key, value)
        shared = F.scaled_dot_product_attention(query, torch.cat([key, key_ref], 2), torch.cat([value, value_ref], 2))
        out = torch.lerp(own, shared, self.bank.strength)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden
        return out / attn.rescale_output_factor


def _check_strength(strength: Any, field_name: str = "reference_strength") -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ConfigError(field_name, strength, "a number from 0 (off) to 1 (attend fully to the anchor), e.g. 0.5")
    return float(strength)


@contextmanager
def reference_attention(unet: Any, strength: float, offload: bool = False) -> Iterator[ReferenceBank]:
    """Install reference-attention processors on every self-attention layer of ``unet``.

    Yields the `ReferenceBank`; call ``bank.record()`` before the anchor run and ``bank.read()``
    before the others. The original processors come back on exit, even after an error.
    """
    strength = _check_strength(strength)
    original = unet.attn_processors
    bank = ReferenceBank(strength, offload=offload)
    # attn1 is the self-attention of each transformer block; attn2 attends to the prompt.
    procs = {name: ReferenceAttnProcessor(name, proc, bank) if name.endswith("attn1.processor") else proc
             for name, proc in original.items()}
    if not any(isinstance(p, ReferenceAttnProcessor) for p in procs.values()):
        raise ConfigError("unet", type(unet).__name__, "a UNet with self-attention layers (attn1)")
    unet.set_attn_processor(procs)
    try:
        yield bank
    finally:
        unet.set_attn_processor(original)


def record_reference_image(studio: Any, image: Any, config: Any, bank: ReferenceBank) -> None:
    """Record a user-given reference image as the anchor (the "reference-only" way).

    The image is encoded with the VAE, noised to each timestep of ``config``'s schedule with
    that recipe's seed noise, and run through the UNet with the recipe's prompt, so the recorded
    self-attention inputs line up step by step with the sheet's own runs.
    """
    import torch

    from .compat import forget_step_index
    from .schedulers import make_scheduler

    unet = studio.components["unet"]
    latents = studio.encode(image.convert("RGB").resize((config.width, config.height)))
    scheduler = make_scheduler(config.scheduler, studio.base_scheduler_config)
    scheduler.set_timesteps(config.num_inference_steps, device=unet.device)
    generator = torch.Generator("cpu").manual_seed(config.seed)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    encoded = studio.encoder.encode(config.prompt, config.negative_prompt, clip_skip=config.clip_skip)
    cfg = config.guidance_scale > 1.0
    embeds = torch.cat([encoded.negative_prompt_embeds, encoded.prompt_embeds]) if cfg else encoded.prompt_embeds
    embeds = embeds.to(unet.device, unet.dtype)
    bank.record()
    with torch.no_grad():
        for t in scheduler.timesteps:
            # step() is never called here, so each timestep is looked up afresh.
            forget_step_index(scheduler)
            noisy = scheduler.add_noise(latents, noise, t.reshape(1))
            model_in = torch.cat([noisy] * 2) if cfg else noisy
            model_in = scheduler.scale_model_input(model_in, t)
            unet(model_in, t, encoder_hidden_states=embeds, return_dict=False)


# ---------------------------------------------------------------------------------------------
# (d) IP-Adapter
# ---------------------------------------------------------------------------------------------
@contextmanager
def ip_adapter(studio: Any, weights: str, image: Any, scale: float = 0.6, *, subfolder: str = "models",
               weight_name: str = "ip-adapter_sd15.safetensors",
               image_encoder_folder: str | None = "image_encoder") -> Iterator[None]:
    """Condition every UNet call inside the block on ``image`` through an IP-Adapter.

    ``weights`` is a hub id (e.g. ``h94/IP-Adapter``) or a local folder laid out like it. The
    image embedding is computed once and handed to the UNet by a forward pre-hook, so the
    Studio's own run loop needs no change. The adapter is unloaded on exit.
    """
    import torch

    from .models.loading import hub_offline

    pipes = [studio.pipeline(kind) for kind in ("txt2img", "controlnet")]
    try:
        pipes[0].load_ip_adapter(weights, subfolder=subfolder, weight_name=weight_name,
                                 image_encoder_folder=image_encoder_folder,
                                 local_files_only=hub_offline())
    except Exception as err:  # diffusers raises several classes for "not there"
        raise ModelLoadError(
            f"IP-Adapter weights are not available: {weights}/{subfolder}/{weight_name} (with its image encoder) "
            f"could not be loaded from a local folder, the cache or the hub ({type(err).__name__}: {err}). "
            "Download h94/IP-Adapter once, or pass ip_adapter='path/to/folder'.") from None
    pipe = pipes[0]
    for other in pipes[1:]:  # the shared UNet already has the adapter; the encoder must be known too
        other.image_encoder = pipe.image_encoder
        other.feature_extractor = pipe.feature_extractor
    pipe.set_ip_adapter_scale(scale)
    unet = studio.components["unet"]
    with torch.no_grad():
        embeds = pipe.prepare_ip_adapter_image_embeds(ip_adapter_image=image, ip_adapter_image_embeds=None,
                                                      device=unet.device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True)

    def add_image_embeds(module: Any, args: tuple, kwargs: dict) -> tuple:
        batch = (args[0] if args else kwargs["sample"]).shape[0]
        # CFG batches hold [uncond, cond]; without CFG only the conditional half is used.
        use = [e if e.shape[0] == batch else e[-batch:] for e in embeds]
        kwargs["added_cond_kwargs"] = {**(kwargs.get("added_cond_kwargs") or {}), "image_embeds": use}
        return args, kwargs

    handle = unet.register_forward_pre_hook(add_image_embeds, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        pipe.unload_ip_adapter()


# ---------------------------------------------------------------------------------------------
# Measuring consistency
# ---------------------------------------------------------------------------------------------
def load_embedder(name_or_path: str = DEFAULT_EMBEDDER, device: Any = None, download: bool = True) -> Any:
    """A CLIPVisionModelWithProjection from a local folder or the local hub cache; a clear
    `ModelLoadError` when it is not there.

    It downloads only with `download=True` and without ``HF_HUB_OFFLINE=1``: work that merely
    *reports* a score (a sheet) must not stall on a 1.7 GB download or on network retries.
    """
    from .models.loading import hub_offline

    offline = not download or hub_offline()
    problem = f"CLIP image embedder {name_or_path!r} is not available locally or from the hub"
    advice = "download it once, or pass embedder= a loaded CLIPVisionModelWithProjection or a local folder"
    if offline and not Path(name_or_path).is_dir():
        from huggingface_hub import try_to_load_from_cache

        # Answer at once instead of letting from_pretrained walk every fallback (seconds).
        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            raise ModelLoadError(f"{problem} (HF_HUB_OFFLINE=1 and it is not in the cache); {advice}")
    from transformers import CLIPVisionModelWithProjection

    try:
        model = CLIPVisionModelWithProjection.from_pretrained(name_or_path, local_files_only=offline)
    except Exception as err:  # OSError / EnvironmentError variants for "not found"
        raise ModelLoadError(f"{problem} ({type(err).__name__}); {advice}") from None
    return model.to(device) if device is not None else model


def embed_images(images: Sequence[Any], embedder: Any) -> Any:
    """L2-normalised CLIP image embeddings, one row per image (CLIP's resize, crop and normalisation)."""
    import torch
    from transformers import CLIPImageProcessor

    if callable(embedder) and not isinstance(embedder, torch.nn.Module):
        emb = torch.as_tensor(embedder(list(images)), dtype=torch.float32)
    else:
        size = int(embedder.config.image_size)
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        param = next(embedder.parameters())
        pixels = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = embedder(pixel_values=pixels.to(param.device, param.dtype))
        emb = (out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output).float().cpu()
    return torch.nn.functional.normalize(emb, dim=-1)


def score(images: Sequence[Any], embedder: Any = None, download: bool = True) -> float:
    """Mean pairwise cosine similarity of the images' CLIP embeddings (1.0 = identical embeddings).

    ``embedder``: a CLIPVisionModelWithProjection (or any callable images -> (N, D) array), a
    model name/folder, or None for openai/clip-vit-large-patch14 when it is available locally.
    """
    images = list(images)
    if len(images) < 2:
        raise ConfigError("images", f"{len(images)} image(s)", "at least two images to compare")
    if embedder is None or isinstance(embedder, (str, Path)):
        embedder = load_embedder(str(embedder or DEFAULT_EMBEDDER), download=download)
    emb = embed_images(images, embedder)
    sim = emb @ emb.T
    n = len(images)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


# ---------------------------------------------------------------------------------------------
# Sheets
# ---------------------------------------------------------------------------------------------
@dataclass
class SheetResult(Result):
    """A character sheet: the images (one per pose, each with its recipe), their labels, the
    labelled grid, the consistency score (None when no embedder was available) and the sheet
    settings that rebuild it with `Studio.sheet`."""

    labels: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    control_images: list[Any] = field(default_factory=list)

    @property
    def grid_image(self) -> Any:
        """The labelled grid (one cell per pose)."""
        return self.grid(cols=min(len(self.images), 4), labels=self.labels)

    def save(self, directory: str | os.PathLike, *, prefix: str | None = None, overwrite: bool = False) -> list[Path]:
        """Write ``NN-<pose>.png`` (each with its recipe in the metadata), ``grid.png`` and
        ``sheet.json``. Existing files are never replaced unless ``overwrite``."""
        from .io_utils import atomic_write, ensure_dir
        from .metadata import png_info
        from .result import slug

        out = ensure_dir(directory)
        names = [f"{prefix + '-' if prefix else ''}{i:02d}-{slug(label)}.png" for i, label in enumerate(self.labels)]
        grid_name, json_name = f"{prefix + '-' if prefix else ''}grid.png", f"{prefix + '-' if prefix else ''}sheet.json"
        if not overwrite:  # check all names first so a refusal leaves no half-written sheet
            taken = [n for n in [*names, grid_name, json_name] if (out / n).exists()]
            if taken:
                from .errors import OutputError

                raise OutputError(f"{str(out / taken[0])!r} already exists: pass overwrite=True "
                                  "(CLI: --overwrite) or choose another folder")
        paths = []
        sheet_json = json.dumps(self.summary(names), indent=2)
        for name, image, recipe in zip(names, self.images, self.recipes):
            info = png_info(recipe)
            info.add_text("charstudio_sheet", json.dumps(self.settings))
            paths.append(atomic_write(out / name, lambda tmp, im=image, pi=info: im.save(tmp, format="PNG", pnginfo=pi),
                                      overwrite=overwrite))
        grid = self.grid_image
        paths.append(atomic_write(out / grid_name, lambda tmp: grid.save(tmp, format="PNG"), overwrite=overwrite))
        old_files = _sheet_files(out / json_name) if overwrite else []
        paths.append(atomic_write(out / json_name, lambda tmp: Path(tmp).write_text(sheet_json, encoding="utf-8"),
                                  overwrite=overwrite))
        # The new sheet is complete: the old sheet's pictures it did not rewrite (it had more
        # poses) go, so the folder holds one sheet. Only files the old sheet.json listed.
        for name in old_files:
            if name not in names:
                (out / name).unlink(missing_ok=True)
        return paths

    def summary(self, files: list[str] | None = None) -> dict[str, Any]:
        """JSON-ready description: settings, labels, score, and each image's recipe."""
        return {"settings": self.settings, "labels": self.labels, "score": self.score,
                "files": files, "recipes": [r.to_dict() for r in self.recipes]}


def _sheet_files(sheet_json: Path) -> list[str]:
    """The picture names an existing ``sheet.json`` lists (plain names in its folder only)."""
    try:
        files = json.loads(sheet_json.read_text(encoding="utf-8")).get("files") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str) and f == Path(f).name and f.lower().endswith(".png")
            and not f.startswith(".")]


def _pose_label(pose: Any, i: int) -> str:
    if isinstance(pose, str) and not pose.lstrip().startswith(("{", "[")):
        return Path(pose).stem if pose.endswith(".json") else pose
    return f"pose {i + 1}"


def distributed_state() -> Any:
    """accelerate's PartialState when launched with several processes (``accelerate launch
    --num_processes N``), else None. On machines without CUDA, or with ``ACCELERATE_USE_CPU``,
    the processes talk over gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    return state if state.num_processes > 1 else None


def _gather(items: list, state: Any) -> list:
    if state is None:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def _card_lora(studio: Any, card: Any, use_lora: bool) -> tuple[Any, bool]:
    """(b): the card to use and whether its LoRA is in use.

    A Studio that applies cards' LoRAs itself (in make_config) gets the card as is; one with only
    ``load_lora`` gets the LoRA loaded here. ``use_lora=False`` hands over a copy without the LoRA.
    """
    import dataclasses

    if card is None or not getattr(card, "lora", None):
        return card, False
    if not use_lora:
        return dataclasses.replace(card, lora=None), False
    if hasattr(studio, "_apply_card_lora"):
        return card, True
    loader = getattr(studio, "load_lora", None)
    if loader is None:
        logger.warning("card %s names LoRA %r but this Studio cannot load LoRAs; the sheet runs without it",
                       card.name, card.lora)
        return card, False
    loader(card.lora, weight=card.lora_weight)
    return card, True


def make_sheet(
    studio: Any,
    character: Any,
    poses: Sequence[Any],
    *,
    seed: int | None = None,
    same_noise: bool = True,
    reference_strength: float = 0.0,
    reference_image: Any = None,
    reference_offload: bool = False,
    use_lora: bool = True,
    ip_adapter_weights: str | None = None,
    ip_adapter_image: Any = None,
    ip_adapter_scale: float = 0.6,
    ip_adapter_weight_name: str = "ip-adapter_sd15.safetensors",
    embedder: Any = None,
    compute_score: bool | None = None,
    labels: Sequence[str] | None = None,
    callbacks: Sequence[Callable] = (),
    progress: Callable | None = None,
    cancel: Any = None,
    **settings: Any,
) -> SheetResult:
    """One character in N poses; see the module docstring for the consistency mechanisms.

    ``settings`` are `Studio.make_config` arguments shared by every image (style, width, height,
    num_inference_steps, guidance_scale, controlnet_conditioning_scale, ...). ``compute_score``:
    True requires an embedder, False skips scoring, None scores when an embedder is available.
    """
    from .character import Character, is_character, load_character

    # 1. Check the request before any model work.
    poses = list(poses) if not isinstance(poses, (str, dict)) else [poses]
    if not poses:
        raise ConfigError("poses", [], "at least one pose: names (see `charstudio poses`), Pose objects or pose dicts")
    labels = list(labels) if labels is not None else [_pose_label(p, i) for i, p in enumerate(poses)]
    if len(labels) != len(poses):
        raise ConfigError("labels", len(labels), f"one label per pose ({len(poses)})")
    reference_strength = _check_strength(reference_strength)
    if settings.get("num_images", 1) != 1:
        raise ConfigError("num_images", settings["num_images"], "1: a sheet draws one image per pose")
    if reference_image is not None and reference_strength == 0:
        raise ConfigError("reference_strength", 0, "a strength above 0 to use reference_image, e.g. 0.5")
    if (ip_adapter_weights is None) != (ip_adapter_image is None):
        raise ConfigError("ip_adapter_image" if ip_adapter_image is None else "ip_adapter_weights", None,
                          "both ip_adapter_weights and ip_adapter_image, or neither")
    card = character if isinstance(character, Character) else (
        load_character(character) if isinstance(character, str) and is_character(character) else None)
    card, lora_used = _card_lora(studio, card, use_lora)

    # 2. One recipe per pose. Same noise: every pose uses the base seed; otherwise seed + i.
    state = distributed_state()
    first = studio.make_config(card or character, seed=seed, pose=poses[0], **settings)
    if state is not None:
        # A seed drawn at random differs per process: rank 0's is the sheet's.
        from accelerate.utils import broadcast_object_list

        first = first.replace(seed=broadcast_object_list([first.seed], from_process=0)[0])
    base_seed = first.seed
    configs = [first] + [studio.make_config(card or character, seed=base_seed if same_noise else base_seed + i,
                                            pose=p, **settings) for i, p in enumerate(poses[1:], start=1)]

    # 3. This process's share (all of it unless launched with several processes).
    indices = list(range(len(poses)))
    mine = indices if state is None else indices[state.process_index::state.num_processes]
    run_kwargs = dict(callbacks=callbacks, progress=progress, cancel=cancel)
    done: list[tuple[int, Any, dict]] = []

    def run(i: int) -> None:
        res = studio.run(configs[i], **run_kwargs)
        done.append((i, res.images[0], res.recipes[0].to_dict()))

    # 4. Generate, with (d) IP-Adapter and (c) reference attention when asked for.
    with _maybe(ip_adapter_weights is not None, lambda: ip_adapter(studio, ip_adapter_weights, ip_adapter_image,
                                                                   ip_adapter_scale, weight_name=ip_adapter_weight_name)):
        if reference_strength > 0:
            with reference_attention(studio.components["unet"], reference_strength, reference_offload) as bank:
                if reference_image is not None:
                    record_reference_image(studio, reference_image, configs[0], bank)
                    todo = mine
                else:
                    # Every process records the anchor (pose 0); only its owner keeps the image.
                    bank.record()
                    res = studio.run(configs[0], **run_kwargs)
                    if 0 in mine:
                        done.append((0, res.images[0], res.recipes[0].to_dict()))
                    todo = [i for i in mine if i != 0]
                for i in todo:
                    bank.read()
                    run(i)
        else:
            for i in mine:
                run(i)

    # 5. Collect (across processes), lay out, measure.
    from .config import GenerationConfig

    gathered = sorted(_gather(done, state), key=lambda item: item[0])
    images = [im for _, im, _ in gathered]
    recipes = [GenerationConfig.from_dict(r) for _, _, r in gathered]
    sheet_settings = {
        "character": card.name if card else None, "prompt": first.prompt, "poses": labels, "seed": base_seed,
        "same_noise": same_noise, "reference_strength": reference_strength,
        "reference_image": reference_image is not None, "lora": card.lora if lora_used else None,
        "ip_adapter": ip_adapter_weights, "ip_adapter_scale": ip_adapter_scale if ip_adapter_weights else None,
        "model": studio.model_id, "processes": 1 if state is None else state.num_processes,
    }
    result = SheetResult(images, recipes, {}, labels=labels, settings=sheet_settings,
                         control_images=[studio._render_pose(c) for c in configs])
    if compute_score is not False and len(images) > 1:
        try:
            # Only an embedder that is asked for may be downloaded; the automatic score uses one on disk.
            result.score = score(images, embedder, download=bool(compute_score) or embedder is not None)
        except ModelLoadError:
            if compute_score:
                raise
            logger.info("no CLIP embedder available; the sheet has no consistency score")
    return result


@contextmanager
def _maybe(condition: bool, factory: Callable[[], Any]) -> Iterator[None]:
    if condition:
        with factory():
            yield
    else:
        yield


# ---------------------------------------------------------------------------------------------
# Photo -> posed character (img2img, SDEdit strength)
# ---------------------------------------------------------------------------------------------
def from_photo(studio: Any, character: Any, photo: Any, *, strength: float = 0.6, pose: Any = "detect",
               detector: Any = None, detector_weights: str | None = None, seed: int | None = None,
               controlnet_conditioning_scale: float = 1.0, **settings: Any) -> Result:
    """Turn a reference photo into the character (in the card's style) with SDEdit img2img.

    ``strength`` (0..1) is how far the photo is noised before denoising: low keeps the photo's
    layout and colours, high keeps only its pose. ``pose="detect"`` extracts the photo's pose with
    `Pose.from_image` and adds the OpenPose ControlNet; pass a Pose/name to use another, or None
    for plain img2img. The recipe records the prompt and pose; the photo itself is not stored.
    """
    import torch

    from .pose import Pose, load_pose
    from .schedulers import make_scheduler

    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise ConfigError("strength", strength, "a number in (0, 1]: 0.3 keeps the photo, 0.8 keeps mostly the pose")
    photo = photo.convert("RGB")
    settings.setdefault("width", photo.width // 8 * 8)
    settings.setdefault("height", photo.height // 8 * 8)
    if isinstance(pose, str) and pose == "detect":
        pose = Pose.from_image(photo, detector=detector, weights=detector_weights)
    config = studio.make_config(character, seed=seed, pose=pose if pose is None else load_pose(pose),
                                controlnet_conditioning_scale=controlnet_conditioning_scale, **settings)
    init = photo.resize((config.width, config.height))
    kind = "controlnet_img2img" if config.pose is not None else "img2img"
    pipe = studio.pipeline(kind)
    pipe.scheduler = make_scheduler(config.scheduler, studio.base_scheduler_config)
    encoded = studio.encoder.encode(config.prompt, config.negative_prompt, clip_skip=config.clip_skip)
    extra: dict[str, Any] = {}
    if config.pose is not None:
        extra = dict(control_image=studio._render_pose(config),
                     controlnet_conditioning_scale=config.controlnet_conditioning_scale,
                     control_guidance_start=config.control_guidance_start,
                     control_guidance_end=config.control_guidance_end)
    out = pipe(prompt_embeds=encoded.prompt_embeds, negative_prompt_embeds=encoded.negative_prompt_embeds,
               image=init, strength=float(strength), num_inference_steps=config.num_inference_steps,
               guidance_scale=config.guidance_scale, generator=torch.Generator("cpu").manual_seed(config.seed),
               output_type="latent", **extra)
    images = studio.decode(out.images)
    return Result(images, [config], {"img2img_strength": float(strength), "kind": kind})
