"""The GPU benchmark: real architectures, no download, one JSON of figures.

    python benchmarks/gpu.py --out results/          # a CUDA machine; under 8 minutes (--budget-s)
    python benchmarks/gpu.py --out /tmp/x --smoke    # any machine: tiny models, CPU, a few minutes (checks the script)

Models are the built-in `sd15-arch` and `sdxl-arch`: SD 1.5's and SDXL's exact architectures
(UNet, VAE, text encoders, OpenPose ControlNet, real CLIP tokenizers) with random weights, which
cost exactly the compute of the real checkpoints, so no hub access is needed. fp16 on CUDA.

Rows (each: seconds per image, it/s, images/s, peak GPU memory):
- SD 1.5, 512x512, 30 steps: batch 1 and batch 8, with and without the OpenPose ControlNet;
- SDXL, 1024x1024, 30 steps: batch 1 with the ControlNet;
- for each: plain diffusers eager (the pipeline called directly on the same parts), charstudio
  eager (`Studio.generate`); then charstudio fast (`studio.set_speed("max")`: fused QKV,
  channels_last, torch.compile of the UNet, ControlNet and VAE decoder) for the batch-1 rows:
  compile_s (the first call less a warm call), then seconds per batch, it/s, images/s and peak
  memory after warm-up, and how often each part compiled. Batch 8 fast is left out by default
  (a second batch size recompiles into a dynamic graph: --fast-batches 1 8 measures it). Rows
  that would start after --budget-s are recorded as skipped;
- LoRA training steps per second: SD 1.5 at 512 px rank 16, SDXL at 1024 px rank 16 with cached
  latents and text embeddings.
Runs alternate between plain and charstudio after a warm-up. This is a benchmark: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROMPT, NEGATIVE = "a girl with long silver hair, violet eyes, sailor jacket, full body", "blurry, lowres"


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _timed(fn: Callable[[], Any], device: Any, repeats: int) -> tuple[float, float | None]:
    """Median seconds of `fn` over `repeats` runs (after one warm-up), and the peak memory."""
    fn()
    _peak_reset(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), _peak_gib(device)


def generation_rows(studio: Any, name: str, size: int, steps: int, batches: list[int], controlnet: list[bool],
                    repeats: int) -> list[dict]:
    import torch

    from charstudio.pose import load_pose
    from charstudio.schedulers import make_scheduler

    rows = []
    pose_image = load_pose("walking").fit(size, size).render(size, size)
    for use_cn in controlnet:
        kind = "controlnet" if use_cn else "txt2img"
        pipe = studio.pipeline(kind)
        for batch in batches:
            extra = {"image": pose_image} if use_cn else {}

            def plain(pipe: Any = pipe, batch: int = batch, extra: dict = extra) -> None:
                pipe.scheduler = make_scheduler("dpm++2m-karras", studio.base_scheduler_config)
                pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, width=size, height=size,
                     guidance_scale=studio.default_guidance, num_images_per_prompt=batch,
                     generator=torch.Generator("cpu").manual_seed(1), **extra)

            def ours(batch: int = batch, use_cn: bool = use_cn) -> None:
                studio.generate(PROMPT, negative_prompt=NEGATIVE, seed=1, num_inference_steps=steps, width=size,
                                height=size, num_images=batch, style="none", pose=pose_image if use_cn else None)

            row: dict[str, Any] = {"model": name, "size": size, "steps": steps, "batch": batch, "controlnet": use_cn}
            for label, fn in (("diffusers_eager", plain), ("charstudio_eager", ours)):
                seconds, peak = _timed(fn, studio.device, repeats)
                row[label] = {"s_per_batch": round(seconds, 4), "it_per_s": round(steps / seconds, 2),
                              "images_per_s": round(batch / seconds, 3), "peak_gib": peak}
            row["ratio_eager"] = round(row["charstudio_eager"]["s_per_batch"] / row["diffusers_eager"]["s_per_batch"], 3)
            rows.append(row)
    return rows


def fast_rows(studio: Any, rows: list[dict], steps: int, fast_batches: list[int], repeats: int,
              options: dict, deadline: float) -> None:
    """Add `charstudio_fast` to each row: set_speed("max") once, then per row the first call
    (compiling) and the warm calls. Rows past `deadline` (perf_counter) are marked skipped."""
    from charstudio.models.speed import compile_stats

    started = time.perf_counter()
    done = studio.set_speed("max", **options)
    set_s = time.perf_counter() - started
    pose_cache: dict[int, Any] = {}
    for row in rows:
        if row["batch"] not in fast_batches:
            row["charstudio_fast"] = {"status": "not measured (--fast-batches)"}
            continue
        if time.perf_counter() > deadline:
            row["charstudio_fast"] = {"status": "skipped: time budget (--budget-s) spent"}
            continue
        size, batch, use_cn = row["size"], row["batch"], row["controlnet"]
        if use_cn and size not in pose_cache:
            from charstudio.pose import load_pose

            pose_cache[size] = load_pose("walking").fit(size, size).render(size, size)

        def ours(batch: int = batch, use_cn: bool = use_cn, size: int = size) -> None:
            studio.generate(PROMPT, negative_prompt=NEGATIVE, seed=1, num_inference_steps=steps, width=size,
                            height=size, num_images=batch, style="none", pose=pose_cache[size] if use_cn else None)

        _sync(studio.device)
        t = time.perf_counter()
        ours()  # compiles what this size, batch and pipeline need
        _sync(studio.device)
        first = time.perf_counter() - t
        seconds, peak = _timed(ours, studio.device, repeats)
        row["charstudio_fast"] = {"compile_s": round(max(first - seconds, 0.0), 2), "first_call_s": round(first, 3),
                                  "s_per_batch": round(seconds, 4), "it_per_s": round(steps / seconds, 2),
                                  "images_per_s": round(batch / seconds, 3), "peak_gib": peak,
                                  "compiles_so_far": compile_stats(studio), "set_speed_s": round(set_s, 2),
                                  "applied": done}
        row["ratio_fast"] = round(seconds / row["diffusers_eager"]["s_per_batch"], 3)
    studio.set_speed("default")


def _reset_compiler() -> None:
    """Forget compiled graphs between models (dynamo's caches are per code object, shared by
    every UNet in the process)."""
    import torch

    torch._dynamo.reset()


def training_row(studio: Any, name: str, resolution: int, steps: int, cache: bool) -> dict:
    import numpy as np
    from PIL import Image

    from charstudio.training import LoraTrainingConfig

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(data / f"{i}.png")
        config = LoraTrainingConfig(data_dir=str(data), name="bench", model=name, output_dir=str(Path(tmp) / "lora"),
                                    max_train_steps=steps, rank=16, resolution=resolution, batch_size=1,
                                    num_validation_images=0, cache_latents=cache, learning_rate=1e-4)
        _peak_reset(studio.device)
        marks = []
        for _record in studio.train_lora(config):
            _sync(studio.device)
            marks.append(time.perf_counter())
    per_step = statistics.median(b - a for a, b in zip(marks[1:], marks[2:])) if len(marks) > 2 else float("nan")
    row = {"model": name, "training": True, "resolution": resolution, "rank": 16, "batch": 1, "cached_latents": cache,
           "s_per_step": round(per_step, 4), "steps_per_s": round(1 / per_step, 2), "peak_gib": _peak_gib(studio.device)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_benchmark.json")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, not the speed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fast-batches", type=int, nargs="+", default=[1],
                    help="batch sizes measured on the fast path (default: 1; a second size recompiles)")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend for the fast rows (default: inductor on CUDA, eager with --smoke)")
    ap.add_argument("--compile-mode", default=None, help="inductor mode, e.g. reduce-overhead (CUDA graphs)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="fast rows that would start after this many seconds are skipped (default 450 on a GPU, "
                         "none with --smoke)")
    args = ap.parse_args()

    import torch

    from charstudio import Studio

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (or --smoke for a check of the script on the CPU)")
    device, dtype = ("cpu", "fp32") if args.smoke else ("cuda", "fp16")
    plan = [  # (model, size, steps, batches, controlnet on/off, training resolution)
        ("tiny" if args.smoke else "sd15-arch", 64 if args.smoke else 512, 2 if args.smoke else 30, [1, 2] if args.smoke
         else [1, 8], [False, True], 64 if args.smoke else 512),
        ("tiny-sdxl" if args.smoke else "sdxl-arch", 64 if args.smoke else 1024, 2 if args.smoke else 30, [1], [True],
         64 if args.smoke else 1024),
    ]
    started = time.perf_counter()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
                              "torch": torch.__version__, "dtype": dtype, "rows": []}
    for name, size, steps, batches, controlnet, resolution in plan:
        t = time.perf_counter()
        studio = Studio.from_pretrained(name, device=device, dtype=dtype)
        report.setdefault("load_s", {})[name] = round(time.perf_counter() - t, 1)
        rows = generation_rows(studio, name, size, steps, batches, controlnet, 1 if args.smoke else args.repeats)
        options = {"compile_backend": args.compile_backend or ("eager" if args.smoke else None),
                   "compile_mode": args.compile_mode}
        fast_rows(studio, rows, steps, args.fast_batches, 1 if args.smoke else args.repeats, options,
                  started + (args.budget_s or (float("inf") if args.smoke else 450.0)))
        _reset_compiler()
        for row in rows:
            print(json.dumps(row), flush=True)
        report["rows"] += rows
        report["rows"].append(training_row(studio, name, resolution, 3 if args.smoke else 12,
                                           cache=studio.family.name == "sdxl"))
        del studio
        if device == "cuda":
            torch.cuda.empty_cache()
    report["total_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_benchmark.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'gpu_benchmark.json'} in {report['total_s']} s")


if __name__ == "__main__":
    main()
