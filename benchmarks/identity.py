"""Benchmark: what identity costs a sheet on mini: scoring per picture, and re-rolls per sheet.

    python benchmarks/identity.py                       # mini on CPU, 20 four-pose sheets per mode
    python benchmarks/identity.py --cards 2 --seeds 2   # a quicker look

Three modes draw the same sheets (mini-world cards, several seeds, four poses), side by side:
each sheet is drawn in every mode before the next sheet, so drift (other load, heat) hits all
modes alike:

- ``off``:    no identity scoring (``scorer=False``), as sheets were before;
- ``score``:  each picture scored against the first (the default, no re-rolls);
- ``reroll``: scored, and views below the scorer's threshold re-rolled (``min_identity="auto"``,
  ``max_tries``).

Prints the scorer's time per picture (embedding alone), the median seconds per sheet of each
mode and their ratio against ``off``, the share of views at or above the threshold without and
with re-rolls, and the mean number of tries per view.
"""

from __future__ import annotations

import argparse
import statistics
import time

POSES = ["standing_front", "walking", "waving", "running"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--device", default=None)
    ap.add_argument("--scorer", default="mini", help="identity scorer (default mini; auto for the automatic choice)")
    ap.add_argument("--cards", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-tries", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()

    import torch

    from charstudio import Studio
    from charstudio.mini.evaluate import world_cards
    from charstudio.sheets.identity import resolve_scorer

    if args.threads:
        torch.set_num_threads(args.threads)
    studio = Studio.from_pretrained(args.model, device=args.device)
    scorer = resolve_scorer(args.scorer, model=studio.model_id)
    settings = dict(num_inference_steps=args.steps, compute_score=False)
    modes = {"off": dict(scorer=False), "score": dict(scorer=scorer),
             "reroll": dict(scorer=scorer, min_identity="auto", max_tries=args.max_tries)}

    # 1. Warm up (first-call costs), then the sheets, every mode per sheet before the next.
    studio.sheet(world_cards(1)[0], POSES, seed=0, **settings, **modes["score"])
    times: dict[str, list[float]] = {m: [] for m in modes}
    first = reached = views = tries = redrawn_sheets = 0
    pictures = []
    for card in world_cards(args.cards):
        for seed in range(1, args.seeds + 1):
            for mode, extra in modes.items():
                t0 = time.perf_counter()
                sheet = studio.sheet(card, POSES, seed=seed, **settings, **extra)
                times[mode].append(time.perf_counter() - t0)
                if mode == "reroll":
                    record = sheet.identity_record
                    bar = record.min_identity
                    for view in record.tries[1:]:
                        views += 1
                        first += view[0]["score"] >= bar
                        reached += max(t["score"] for t in view) >= bar
                        tries += len(view)
                    redrawn_sheets += any(len(view) > 1 for view in record.tries)
                elif mode == "off":
                    pictures.extend(sheet.images)

    # 2. The scorer alone: one picture at a time, and a sheet's four at once.
    def median_time(fn, repeats: int = 7) -> float:
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    one = median_time(lambda: scorer.embed(pictures[:1]))
    four = median_time(lambda: scorer.embed(pictures[:4]))

    sheets = args.cards * args.seeds
    base = statistics.median(times["off"])
    print(f"model {args.model} on {studio.device}, {args.steps} steps, {len(POSES)} poses a sheet, {sheets} sheets; "
          f"torch threads {torch.get_num_threads()}")
    print(f"scorer: {scorer.describe()}")
    print(f"scoring: {one * 1000:.1f} ms for one picture, {four * 1000:.1f} ms for a sheet's four "
          f"({four / 4 * 1000:.1f} ms a picture)")
    for mode in modes:
        med = statistics.median(times[mode])
        print(f"{mode:7s} median {med:.3f} s a sheet (mean {statistics.mean(times[mode]):.3f} s), "
              f"{med / base:.3f}x off")
    print(f"views at or above {scorer.min_score:.3f} without re-roll: {first}/{views} ({first / views:.1%}); "
          f"with min_identity=auto, max_tries={args.max_tries}: {reached}/{views} ({reached / views:.1%}); "
          f"mean tries a view {tries / views:.2f}; sheets with a re-roll {redrawn_sheets}/{sheets}")


if __name__ == "__main__":
    main()
