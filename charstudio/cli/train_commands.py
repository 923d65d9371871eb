"""`charstudio train-lora`, `lora-info`, `lora-convert`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types

from charstudio.cli.options import add_checkpoint_file_args, add_lora_dir_arg, add_overwrite_arg


def _training_defaults() -> types.SimpleNamespace:
    """LoraTrainingConfig's defaults: the CLI shows and uses the same ones as the API and the Train app."""
    from charstudio.training import LoraTrainingConfig

    return types.SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(LoraTrainingConfig)
                                    if f.default is not dataclasses.MISSING})


def register(sub: argparse._SubParsersAction) -> None:
    D = _training_defaults()
    t = sub.add_parser(
        "train-lora", help="fine-tune a LoRA on a folder of character images",
        description="Train a LoRA on 5-50 images of one character. Captions come from NAME.txt beside each "
                    "image, else from the instance prompt ('a picture of TRIGGER CLASS'). Output: "
                    "OUTPUT_DIR/NAME/ with pytorch_lora_weights.safetensors (diffusers), NAME.safetensors "
                    "(kohya/A1111), training_config.json, loss.csv and validation images. For several "
                    "processes run it under `accelerate launch`.")
    t.add_argument("data_dir", metavar="DATA_DIR", help="folder of training images (+ optional .txt captions)")
    t.add_argument("--name", required=True, help="LoRA name; output goes to OUTPUT_DIR/NAME/")
    t.add_argument("--model", default="mini",
                   help="base model (SD 1.x or SDXL): preset (mini, tiny, sd15, sdxl, ...), hub id, folder or .safetensors")
    add_checkpoint_file_args(t)
    t.add_argument("--output-dir", default=D.output_dir, help=f"where LoRA folders go (default: {D.output_dir}/)")
    t.add_argument("--steps", type=int, default=D.max_train_steps, help=f"optimizer steps (default {D.max_train_steps})")
    t.add_argument("--rank", type=int, default=D.rank, help=f"LoRA rank (default {D.rank})")
    t.add_argument("--lora-layers", choices=["attention", "transformer"], default=D.lora_layers,
                   help="UNet layers to adapt: attention projections (default), or the whole transformer "
                        "blocks (also feed-forward and proj_in/out)")
    t.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: same as rank)")
    t.add_argument("--lr", type=float, default=D.learning_rate, help=f"learning rate (default {D.learning_rate:g})")
    t.add_argument("--lr-scheduler", choices=["constant", "constant_with_warmup", "linear", "cosine"],
                   default=D.lr_scheduler, help=f"learning-rate schedule after warmup (default {D.lr_scheduler})")
    t.add_argument("--warmup-steps", type=int, default=D.lr_warmup_steps,
                   help=f"steps of linear learning-rate warmup (default {D.lr_warmup_steps})")
    t.add_argument("--text-encoder-lr", type=float, default=None,
                   help="learning rate of the text encoder's adapter (default: --lr)")
    t.add_argument("--text-encoder-2-lr", type=float, default=None,
                   help="SDXL: learning rate of the second text encoder's adapter (default: --text-encoder-lr, "
                        "else --lr)")
    t.add_argument("--batch-size", type=int, default=D.batch_size,
                   help=f"images per step per process (default {D.batch_size})")
    t.add_argument("--resolution", type=int, default=None, help="training size (default: the model's, 512 for SD)")
    t.add_argument("--trigger", default=D.trigger_word,
                   help=f"trigger word that names the character (default {D.trigger_word})")
    t.add_argument("--class-word", default=D.class_word, help=f"what the character is, e.g. girl (default {D.class_word})")
    t.add_argument("--instance-prompt", default=None, help="caption for images without a .txt file")
    t.add_argument("--seed", type=int, default=D.seed)
    t.add_argument("--crop", choices=["center", "buckets"], default=D.crop,
                   help="center-crop squares, or aspect-ratio buckets")
    t.add_argument("--flip", action="store_true", help="random horizontal flips")
    t.add_argument("--train-text-encoder", action="store_true",
                   help="also train LoRA on the text encoder (SDXL: the first, CLIP ViT-L)")
    t.add_argument("--train-text-encoder-2", action="store_true",
                   help="SDXL: also train LoRA on the second text encoder (OpenCLIP bigG)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="less memory, more compute")
    t.add_argument("--no-cache-latents", action="store_true", help="encode images at every step instead of once")
    t.add_argument("--no-cache-text-embeddings", action="store_true",
                   help="run the frozen text encoders at every step instead of encoding each caption once")
    t.add_argument("--snr-gamma", type=float, default=None, help="min-SNR loss weighting, e.g. 5.0")
    t.add_argument("--pose-conditioning", action="store_true",
                   help="run the OpenPose ControlNet in training, fed NAME.pose.json beside each image, so the "
                        "LoRA learns the look rather than the layout (for use with poses)")
    t.add_argument("--controlnet", default=None,
                   help="ControlNet for --pose-conditioning (default: the model's own, or SD 1.5's OpenPose)")
    t.add_argument("--prior-preservation", action="store_true",
                   help="also train on class images generated by the base model")
    t.add_argument("--class-prompt", default=None,
                   help="prompt of the class images (default: 'a picture of a CLASS_WORD'); for a captioned "
                        "dataset, a caption without the trigger word")
    t.add_argument("--num-class-images", type=int, default=D.num_class_images,
                   help=f"class images to draw or use (default {D.num_class_images})")
    t.add_argument("--validation-prompt", default=None,
                   help="default: the first caption file's text, else the instance prompt")
    t.add_argument("--validation-steps", type=int, default=D.validation_steps,
                   help=f"sample every N steps (0: only at the end; default {D.validation_steps})")
    t.add_argument("--validation-images", type=int, default=D.num_validation_images,
                   help=f"images per validation (0: none; default {D.num_validation_images})")
    t.add_argument("--identity-scorer", default=D.identity_scorer,
                   help="score validation pictures against the training pictures, with the LoRA and at weight 0, "
                        "into identity.json: auto (CCIP if cached, else CLIP-I if cached, else mini's scorer), "
                        f"ccip, clip, mini, a CCIP folder, or off (default {D.identity_scorer})")
    t.add_argument("--checkpoint-steps", type=int, default=D.checkpointing_steps,
                   help=f"checkpoint every N steps (default {D.checkpointing_steps})")
    t.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: bf16/fp16 on CUDA, no on CPU")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint of NAME")
    add_overwrite_arg(t, "an existing LoRA of the same name")
    t.set_defaults(func=cmd_train_lora)

    i = sub.add_parser("lora-info", help="describe a LoRA file (format, rank, alpha, base model)")
    i.add_argument("lora", metavar="FILE_OR_NAME")
    add_lora_dir_arg(i)
    i.set_defaults(func=cmd_lora_info)

    c = sub.add_parser("lora-convert", help="rewrite a LoRA in kohya/A1111 or diffusers format")
    c.add_argument("src", metavar="FILE_OR_NAME")
    c.add_argument("dst", metavar="OUT.safetensors")
    c.add_argument("--to", choices=["kohya", "diffusers"], required=True)
    add_overwrite_arg(c, "an existing OUT.safetensors")
    add_lora_dir_arg(c)
    c.set_defaults(func=cmd_lora_convert)


def _config(args: argparse.Namespace):
    from charstudio.training import LoraTrainingConfig

    return LoraTrainingConfig(
        data_dir=args.data_dir, name=args.name, model=args.model, model_config=args.config,
        allow_pickle=args.allow_pickle, output_dir=args.output_dir,
        max_train_steps=args.steps, rank=args.rank, lora_layers=args.lora_layers,
        alpha=args.alpha, learning_rate=args.lr,
        lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.warmup_steps, text_encoder_lr=args.text_encoder_lr,
        text_encoder_2_lr=args.text_encoder_2_lr, train_text_encoder_2=args.train_text_encoder_2,
        cache_text_embeddings=not args.no_cache_text_embeddings,
        batch_size=args.batch_size, resolution=args.resolution, trigger_word=args.trigger,
        class_word=args.class_word, instance_prompt=args.instance_prompt, seed=args.seed, crop=args.crop,
        flip=args.flip, train_text_encoder=args.train_text_encoder,
        gradient_checkpointing=args.gradient_checkpointing, cache_latents=not args.no_cache_latents,
        snr_gamma=args.snr_gamma, pose_conditioning=args.pose_conditioning, controlnet=args.controlnet,
        with_prior_preservation=args.prior_preservation, class_prompt=args.class_prompt,
        num_class_images=args.num_class_images, validation_prompt=args.validation_prompt,
        validation_steps=args.validation_steps, num_validation_images=args.validation_images,
        checkpointing_steps=args.checkpoint_steps, identity_scorer=args.identity_scorer,
        mixed_precision=args.mixed_precision, resume=args.resume, overwrite=args.overwrite)


def cmd_train_lora(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from charstudio.io_utils import output_named
    from charstudio.training import list_checkpoints, train_lora

    config = _config(args)  # validates every number before the model loads
    bar = None
    last = None
    try:
        with output_named("--output-dir", args.output_dir, api_name="output_dir"):
            for record in train_lora(config):
                last = record
                if bar is None:
                    bar = tqdm(total=record.total_steps, initial=record.step - 1, desc=f"training {config.name}",
                               unit="step", disable=not record.is_main_process)
                bar.update(1)
                bar.set_postfix(loss=f"{record.loss:.4f}", lr=f"{record.lr:.2e}", refresh=False)
                if record.identity is not None:
                    bar.write(identity_line(record.step, record.identity))
                if record.checkpoint is not None and record.is_main_process:
                    bar.write(f"checkpoint: {record.checkpoint}")
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        ckpts = list_checkpoints(config.lora_dir)
        where = f"last checkpoint {ckpts[-1]}" if ckpts else "no checkpoint yet"
        print(f"charstudio: interrupted at step {last.step if last else 0} ({where}); "
              "run the same command with --resume to continue", file=sys.stderr)
        return 130
    if bar is not None:
        bar.close()
    if last is not None and last.is_main_process:
        print(f"LoRA {config.name!r}: final loss {last.loss:.4f} after {last.step} steps ({last.elapsed:.0f} s)")
        for kind, path in last.files.items():
            print(f"  {kind:9s} {path}")
    return 0


def identity_line(step: int, identity: dict) -> str:
    """One line per validation point: identity with the LoRA, at weight 0, and the change."""
    base = identity.get("base")
    at_zero = "n/a" if base is None else f"{base:.3f}"
    change = "" if identity.get("change") is None else f", change {identity['change']:+.3f}"
    return (f"identity at step {step}: {identity['trained']:.3f} with the LoRA, {at_zero} at weight 0{change} "
            f"({identity['scorer']}; same character at >= {identity['threshold']:.3f})")


def cmd_lora_info(args: argparse.Namespace) -> int:
    from charstudio.lora import inspect_lora

    info = inspect_lora(args.lora, args.lora_dir)
    print(f"{info.path}")
    print(f"  format      {info.format}")
    print(f"  components  {', '.join(info.components)}")
    print(f"  rank        {info.rank}")
    print(f"  alpha       {info.alpha}")
    print(f"  modules     {info.num_modules}")
    print(f"  made for    {info.made_for or 'unknown'}")
    trigger = info.metadata.get("ss_trigger_word")
    if trigger:
        print(f"  trigger     {trigger}")
    return 0


def cmd_lora_convert(args: argparse.Namespace) -> int:
    from charstudio.io_utils import output_named
    from charstudio.lora import convert_lora

    with output_named("DST", args.dst):
        out = convert_lora(args.src, args.dst, to=args.to, overwrite=args.overwrite, lora_dir=args.lora_dir)
    print(out)
    return 0
