"""Benchmark: a LoRA per region on mini (issue 37): what it costs and whether it bleeds.

    python benchmarks/regional_lora.py                 # mini on CPU, 10 seeds
    python benchmarks/regional_lora.py --seeds 20 --repeats 5

Two characters side by side (128x64, 20 steps), the cape LoRA (zorbi) in the left region and the
boots LoRA (vimbo) in the right one (`charstudio.mini.regional_check`). Prints:

- cost: the median time of one picture with regional adapters, against the same picture (same
  regions and prompts) without them; against both LoRAs on the whole picture (the adapters' own
  compute, unmasked); and against the same UNet call on 3x the rows, which is what
  peft's per-sample adapter batches need for two regions (scene, cape, boots), the alternative the
  masking was chosen over. Runs alternate, so drift hits all equally. The issue's cap: one extra
  UNet pass per extra character.
- bleed: each feature's rate on its own character and on the other, with the LoRAs in their
  regions, with both (or one) applied to the whole picture (what tools without regional LoRAs
  do), and with none.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cost-only", action="store_true", help="skip the bleed measurement")
    args = ap.parse_args()

    import torch

    from charstudio import Studio
    from charstudio.mini.regional_check import measure, scene_configs

    torch.set_num_threads(args.threads)
    studio = Studio.from_pretrained("mini", device="cpu")
    with_loras = scene_configs(studio, "regional", [0], steps=args.steps)[0][0]
    without = with_loras.replace(regions=[{k: v for k, v in r.items() if k != "loras"} for r in with_loras.regions])
    everywhere = scene_configs(studio, "global", [0], steps=args.steps)[0][0]
    cases = {"regions, no adapters": lambda: studio.run(without),
             "regions + a LoRA per region": lambda: studio.run(with_loras),
             "regions + both LoRAs everywhere": lambda: studio.run(everywhere),
             "regions, 3x the UNet rows": lambda: studio.run_batch([without.replace(seed=s) for s in (0, 1, 2)])}
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["regions, no adapters"])
    print(f"mini, 128x64, {args.steps} steps, {args.threads} thread(s), median of {args.repeats}:")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:32s} {m:6.2f} s   x{m / base:.2f}")
    if args.cost_only:
        return
    print(f"bleed over {args.seeds} seeds (own character / other character):")
    for mode, only in (("regional", None), ("global", None), ("global", "zorbi"), ("global", "vimbo"), ("none", None)):
        r = measure(studio, mode, range(args.seeds), steps=args.steps, only=only)
        cells = ", ".join(f"{n} {r['own'][n]:.0%} / {r['other'][n]:.0%}" for n in r["own"])
        print(f"  {mode + (' ' + only + ' only' if only else ''):20s} {cells}")


if __name__ == "__main__":
    main()
