"""IP-Adapter: condition a Studio's pipelines on a reference image, when its weights are there.

Which files: the Studio's model family says (`ModelFamily.ip_adapter`: h94/IP-Adapter's SD 1.5
adapter, or its SDXL "plus" adapter with the ViT-H image encoder); every part can be overridden,
and a weight file can be given by path. Before anything loads, the weight file's header is
checked against the UNet, so an adapter of the other family is refused in one line naming both.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from ..errors import ConfigError, ModelLoadError
from ..models.family import IPAdapterFiles, ModelFamily, family_of_width
from ..weights import read_shapes

if TYPE_CHECKING:
    from ..studio import Studio

FIELD = "ip_adapter_weights"


def resolve_ip_adapter(studio: Studio, weights: str | None = None, *, subfolder: str | None = None,
                       weight_name: str | None = None, image_encoder_folder: str | None = None) -> IPAdapterFiles:
    """The files an IP-Adapter request names, each part left as None taken from the Studio's family.

    ``weights`` is a hub id or a folder laid out like h94/IP-Adapter (None: the family's), or a
    weight file: it is then read as ``<root>/<subfolder>/<file>``, so the family's image encoder
    folder is found where h94/IP-Adapter keeps it.
    """
    default: IPAdapterFiles = studio.family.ip_adapter
    repo = default.repo if weights is None else str(weights)
    path = Path(repo).expanduser()
    if path.is_file():
        if subfolder is not None or weight_name is not None:
            field, value = ("ip_adapter_weight_name", weight_name) if weight_name is not None else (
                "ip_adapter_subfolder", subfolder)
            raise ConfigError(field, value, f"nothing when {FIELD} is a weight file ({repo}); or give its folder "
                                            "with a weight_name and subfolder")
        path = path.resolve()
        repo, subfolder, weight_name = str(path.parent.parent), path.parent.name, path.name
    return IPAdapterFiles(repo, default.subfolder if subfolder is None else subfolder,
                          default.weight_name if weight_name is None else weight_name,
                          default.image_encoder_folder if image_encoder_folder is None else image_encoder_folder)


def _file_label(files: IPAdapterFiles) -> str:
    return f"{files.subfolder}/{files.weight_name}" if files.subfolder else files.weight_name


def _shown(files: IPAdapterFiles, weights: Any = None) -> str:
    """How a message names the adapter: a weight file given by path as the user wrote it (not
    split into the root, subfolder and name it is read as), else the folder or hub id given
    and the file inside it."""
    if weights is not None and Path(str(weights)).expanduser().is_file():
        return repr(str(weights))
    return f"{files.repo!r} (file {_file_label(files)})"


def _named(files: IPAdapterFiles, weights: Any = None) -> str:
    return f"{FIELD}={_shown(files, weights)}"


def _not_available(files: IPAdapterFiles, err: BaseException, family: ModelFamily) -> ModelLoadError:
    default = family.ip_adapter
    return ModelLoadError(
        f"IP-Adapter weights are not available: {files.repo}/{_file_label(files)} (with its image encoder "
        f"{files.image_encoder_folder}) could not be loaded from a local folder, the cache or the hub "
        f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}). "
        f"Download {default.repo} once, or pass {FIELD}='path/to/folder'.")


def _weight_file(files: IPAdapterFiles) -> str:
    """The weight file on disk: in a local folder, or the Hugging Face cache (downloaded unless offline)."""
    from ..models.hub import hub_offline

    root = Path(files.repo).expanduser()
    if root.is_dir():
        path = root / files.subfolder / files.weight_name
        if not path.is_file():
            raise FileNotFoundError(f"no file {path}")
        return str(path)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(files.repo)
    except HFValidationError:
        raise FileNotFoundError(f"no folder or file {files.repo}") from None
    return hf_hub_download(files.repo, files.weight_name, subfolder=files.subfolder or None,
                           local_files_only=hub_offline())


def _tensor_shapes(path: str, files: IPAdapterFiles, weights: Any = None) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, as ``image_proj.<k>`` / ``ip_adapter.<k>`` (only the header of a .safetensors).

    h94/IP-Adapter's older files are pickles (``.bin``), which diffusers' ``load_ip_adapter`` reads
    with weights_only=True; they are read here the same way."""
    return read_shapes(path, FIELD, allow_pickle=True, what="IP-Adapter weight file",
                       advice="re-download it or use another one", label=_shown(files, weights))


def _ip_layers(unet: Any) -> list[str]:
    """The attention layers that get IP-Adapter weights, in diffusers' order (its key ids 1, 3, 5, ...)."""
    return [name[: -len(".processor")] for name in unet.attn_processors
            if not name.endswith("attn1.processor") and "motion_modules" not in name]


def check_ip_adapter_fits(shapes: Mapping[str, tuple[int, ...]], studio: Studio, files: IPAdapterFiles,
                          weights: Any = None) -> None:
    """Refuse an IP-Adapter that does not fit the Studio's UNet, from its weights' shapes alone.

    The rule is diffusers' loading rule: the cross-attention layers are taken in processor order
    and layer i gets ``ip_adapter.<2i+1>.to_{k,v}_ip.weight``, of shape (layer width, UNet
    cross-attention width). The second number tells the families apart (SD 1.5: 768, SDXL: 2048).
    ``weights``: what the user gave as ip_adapter_weights, for the messages.
    """
    family: ModelFamily = studio.family
    unet = studio.components["unet"]
    width = unet.config.cross_attention_dim
    name = _named(files, weights)
    default = family.ip_adapter
    hint = (f"e.g. {FIELD}={default.repo!r} with no weight_name or subfolder "
            f"({default.subfolder}/{default.weight_name})")
    first = shapes.get("ip_adapter.1.to_k_ip.weight")
    if first is None or len(first) != 2:
        raise ModelLoadError(f"{name} is not an IP-Adapter weight file (it has no "
                             f"ip_adapter.1.to_k_ip.weight): use an {family.label} IP-Adapter, {hint}")
    theirs = first[1]
    if theirs != width:
        named = family_of_width(theirs, studio.components)
        label = named.label if named is not None else None
        if label == family.label:
            # Same family, other width (a resized or toy model): "SD 1.x adapter, SD 1.x model" says nothing.
            raise ModelLoadError(f"{name} is an {label} IP-Adapter for {theirs}-wide text features (its to_k_ip "
                                 f"layers), and this {family.label} model's UNet takes {width}-wide ones: use an "
                                 f"IP-Adapter made for this model (its to_k_ip layers {width} wide), or the "
                                 f"adapter with a model whose text features are {theirs} wide")
        what = f"an {label} IP-Adapter" if label else "an IP-Adapter for another model"
        raise ModelLoadError(f"{name} is {what} (its to_k_ip layers take {theirs}-wide "
                             f"text features) and the model is {family.label} ({width} wide): use an "
                             f"{family.label} IP-Adapter, {hint}")
    layers = _ip_layers(unet)
    count = sum(1 for k in shapes if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight"))
    for i, layer in enumerate(layers):
        inner = unet.get_submodule(layer).to_k.weight.shape[0]
        for proj in ("to_k_ip", "to_v_ip"):
            key = f"ip_adapter.{2 * i + 1}.{proj}.weight"
            if count != len(layers) or shapes.get(key) != (inner, width):
                raise ModelLoadError(
                    f"{name} has IP-Adapter weights for {count} cross-attention layers "
                    f"and this {family.label} UNet has {len(layers)} ({key} should be {inner}x{width}, it is "
                    f"{'missing' if key not in shapes else 'x'.join(map(str, shapes[key]))}): use an IP-Adapter "
                    f"made for this model's architecture, {hint}")


def _encoder_subfolder(files: IPAdapterFiles) -> str:
    # diffusers' rule: a bare name is inside `subfolder`, a path with "/" is from the repo root.
    folder = files.image_encoder_folder
    return Path(files.subfolder, folder).as_posix() if "/" not in folder else Path(folder).as_posix()


def check_image_encoder_fits(shapes: Mapping[str, tuple[int, ...]], encoder_config: Any,
                             files: IPAdapterFiles) -> None:
    """Refuse an image encoder whose features the adapter's image projection cannot take.

    A "plus" adapter (a resampler, ``image_proj.proj_in``) reads the encoder's hidden states; a
    plain one (``image_proj.proj``) its projected image embedding.
    """
    if "image_proj.proj_in.weight" in shapes:
        want, have, what = shapes["image_proj.proj_in.weight"][1], encoder_config.hidden_size, "hidden states"
    elif "image_proj.proj.weight" in shapes:
        want, have, what = shapes["image_proj.proj.weight"][1], encoder_config.projection_dim, "image embeddings"
    else:
        return
    if want != have:
        raise ConfigError("ip_adapter_image_encoder_folder", files.image_encoder_folder,
                          f"the image encoder {_file_label(files)} was trained with: this one gives {have}-wide "
                          f"{what} and the adapter takes {want} (in h94/IP-Adapter, sdxl_models/image_encoder "
                          "for ip-adapter_sdxl.safetensors, models/image_encoder for the vit-h files)")


@contextmanager
def ip_adapter(studio: Studio, weights: str | None, image: Any, scale: float = 0.6, *, subfolder: str | None = None,
               weight_name: str | None = None, image_encoder_folder: str | None = None) -> Iterator[IPAdapterFiles]:
    """Condition every UNet call inside the block on ``image`` through an IP-Adapter; yields the
    files used.

    ``weights`` is a hub id (e.g. ``h94/IP-Adapter``), a local folder laid out like it, or a
    weight file; None, and each of ``subfolder``, ``weight_name`` and ``image_encoder_folder``
    left as None, means the Studio's family's (`ModelFamily.ip_adapter`). The image embedding is
    computed once and handed to the UNet by a forward pre-hook, so the Studio's own run loop
    needs no change. The adapter is unloaded on exit, and the UNet's attention processors are
    put back as they were.
    """
    import torch

    from ..models.hub import hub_offline

    # 1. Which files, and do they fit, before anything loads.
    files = resolve_ip_adapter(studio, weights, subfolder=subfolder, weight_name=weight_name,
                               image_encoder_folder=image_encoder_folder)
    try:
        path = _weight_file(files)
    except Exception as err:  # missing file, offline hub, unknown repo: huggingface_hub raises several classes
        raise _not_available(files, err, studio.family) from None
    shapes = _tensor_shapes(path, files, weights)
    check_ip_adapter_fits(shapes, studio, files, weights)
    try:
        from transformers import CLIPVisionConfig

        encoder_config = CLIPVisionConfig.from_pretrained(files.repo, subfolder=_encoder_subfolder(files),
                                                          local_files_only=hub_offline())
    except Exception as err:
        raise _not_available(files, err, studio.family) from None
    check_image_encoder_fits(shapes, encoder_config, files)

    # 2. Load through the txt2img pipeline: every pipeline shares its UNet.
    unet = studio.components["unet"]
    pipes = [studio.pipeline(kind) for kind in ("txt2img", "controlnet")]
    pipe = pipes[0]
    processors = unet.attn_processors  # diffusers' unload puts default processors back, not these
    saved = [(p, p.image_encoder, p.feature_extractor) for p in pipes]
    handle = None
    try:
        try:
            pipe.load_ip_adapter(files.repo, subfolder=files.subfolder, weight_name=files.weight_name,
                                 image_encoder_folder=files.image_encoder_folder, local_files_only=hub_offline())
        except Exception as err:  # diffusers raises several classes for "not there"
            raise _not_available(files, err, studio.family) from None
        for other in pipes[1:]:
            other.image_encoder = pipe.image_encoder
            other.feature_extractor = pipe.feature_extractor
        pipe.set_ip_adapter_scale(scale)

        # 3. The image embedding, once: diffusers' own preparation, which feeds a "plus"
        # adapter's resampler the encoder's penultimate hidden states and a plain one its
        # image embedding. Rows: [unconditional, conditional]. Computed where the encoder is
        # (the CPU in low-VRAM mode) and moved to wherever the UNet runs.
        with torch.no_grad():
            embeds = pipe.prepare_ip_adapter_image_embeds(
                ip_adapter_image=image, ip_adapter_image_embeds=None, num_images_per_prompt=1,
                device=next(pipe.image_encoder.parameters()).device, do_classifier_free_guidance=True)
        on_device: dict[Any, list[Any]] = {}

        def add_image_embeds(module: Any, args: tuple, kwargs: dict) -> tuple:
            sample = args[0] if args else kwargs["sample"]
            if sample.device not in on_device:
                on_device[sample.device] = [e.to(sample.device) for e in embeds]
            use = [_rows(e, sample.shape[0]) for e in on_device[sample.device]]
            # SDXL's pipelines already pass text_embeds and time_ids here: add to them.
            kwargs["added_cond_kwargs"] = {**(kwargs.get("added_cond_kwargs") or {}), "image_embeds": use}
            return args, kwargs

        handle = unet.register_forward_pre_hook(add_image_embeds, with_kwargs=True)
        yield files
    finally:
        # 4. Everything back as it was, whatever failed.
        if handle is not None:
            handle.remove()
        if unet.encoder_hid_proj is not None:
            pipe.unload_ip_adapter()
        unet.set_attn_processor(processors)
        for p, encoder, extractor in saved:
            p.image_encoder, p.feature_extractor = encoder, extractor


def _rows(embeds: Any, batch: int) -> Any:
    """The embedding rows for a UNet batch: CFG batches hold [uncond x n, cond x n]; without
    CFG only the conditional row is used."""
    if embeds.shape[0] == batch:
        return embeds
    if batch % 2 == 0 and embeds.shape[0] == 2:
        return embeds.repeat_interleave(batch // 2, dim=0)
    return embeds[-1:].expand(batch, *embeds.shape[1:])
