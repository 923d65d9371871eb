"""Benchmark: Studio.generate against plain diffusers on the same model, side by side.

    python benchmarks/generate.py                    # tiny on CPU (offline)
    python benchmarks/generate.py --model sd15       # real model; on a GPU, 512x512, fp16

Both paths use the same loaded components, scheduler, seed and settings; runs alternate so
drift (thermal, other load) hits both equally. Prints the median time per image and the ratio
(target: <= 1.03x on tiny). Also prints the time of `import charstudio` in a fresh process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--scheduler", default="dpm++2m-karras")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import torch

    from charstudio import Studio
    from charstudio.schedulers import make_scheduler

    t0 = time.perf_counter()
    studio = Studio.from_pretrained(args.model, device=args.device)
    load_s = time.perf_counter() - t0
    size = args.size or studio.default_size
    prompt, negative = "a girl with long silver hair, violet eyes, sailor jacket", "blurry, lowres"
    pipe = studio.pipeline("txt2img")
    sync = torch.cuda.synchronize if studio.device.type == "cuda" else (lambda: None)

    def ours() -> None:
        studio.generate(prompt, negative_prompt=negative, seed=1, num_inference_steps=args.steps, width=size,
                        height=size, scheduler=args.scheduler, style="none")

    def plain() -> None:
        pipe.scheduler = make_scheduler(args.scheduler, studio.base_scheduler_config)
        pipe(prompt, negative_prompt=negative, num_inference_steps=args.steps, width=size, height=size,
             guidance_scale=studio.default_guidance, generator=torch.Generator("cpu").manual_seed(1))

    for fn in (ours, plain):  # warm-up: kernels, allocator, caches
        fn()
    times: dict[str, list[float]] = {"charstudio": [], "diffusers": []}
    for _ in range(args.repeats):
        for name, fn in (("charstudio", ours), ("diffusers", plain)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model={args.model} device={studio.device} dtype={studio.dtype} size={size} steps={args.steps} "
          f"scheduler={args.scheduler} repeats={args.repeats} (load {load_s:.1f}s)")
    for k, v in times.items():
        print(f"  {k:10s} median {med[k]*1000:8.1f} ms/image   min {min(v)*1000:8.1f}   "
              f"{args.steps / med[k]:6.1f} it/s")
    print(f"  ratio charstudio/diffusers: {med['charstudio'] / med['diffusers']:.3f}x (target <= 1.03x)")
    if studio.device.type == "cuda":
        print(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")

    code = "import time; t=time.perf_counter(); import charstudio; print(time.perf_counter()-t)"
    imp = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
           for _ in range(3)]
    print(f"  import charstudio: {min(imp)*1000:.0f} ms (target < 1 s; torch is not imported)")


if __name__ == "__main__":
    main()
