"""`charstudio storyboard`: draw a script's panels onto a page, or re-draw one panel of a storyboard."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from charstudio.cli.options import add_model_args, add_overwrite_arg, add_steps_arg
    from charstudio.sheets.identity import DEFAULT_MAX_TRIES

    p = sub.add_parser(
        "storyboard", help="draw a storyboard script (panels of @characters) onto a page, PNG and PDF",
        description="Draw every panel of a storyboard script (YAML: panels with characters, pose, setting, shot, "
                    "caption, line; see prompts/storyboards/example.yaml). Two characters share a panel as regions. "
                    "Each character is scored against its card's anchor picture and the panel is re-drawn at the "
                    "next seed while one is below --min-identity. Writes page.png, page.pdf, each panel's PNG (its "
                    "recipe inside), the anchors, script.yaml and storyboard.json (every panel's recipe, scores "
                    "and tries) into --out. With --panel N, SCRIPT is a storyboard folder and only panel N is "
                    "re-drawn (a new seed) or re-lettered (--line / --caption).")
    p.add_argument("script", metavar="SCRIPT", help="a storyboard script (.yaml), or with --panel a storyboard folder")
    p.add_argument("--out", default=None, help="output folder (default: storyboard/ for a script; with --panel the "
                                               "storyboard's own folder)")
    p.add_argument("--seed", type=int, default=None,
                   help="the first panel's seed (panel i: seed + 16 i; default: the script's, else random); with "
                        "--panel the panel's new seed (default: the one after its last try)")
    add_steps_arg(p)
    p.add_argument("--min-identity", default="auto", metavar="SCORE|auto|none",
                   help="re-draw a panel while a character's identity score against its card's anchor is below "
                        "SCORE (1 - the scorer's difference); auto (default): the scorer's own threshold; none: "
                        "no re-draws")
    p.add_argument("--max-tries", type=int, default=DEFAULT_MAX_TRIES,
                   help=f"pictures per panel in all, the first included (default {DEFAULT_MAX_TRIES})")
    p.add_argument("--scorer", default=None,
                   help="identity scorer: auto (default), ccip, clip, mini, a CCIP folder, or none")
    p.add_argument("--panel", type=int, default=None, metavar="N",
                   help="re-draw panel N (from 1) of the storyboard folder SCRIPT instead of drawing a script")
    p.add_argument("--line", default=None, help="with --panel: the panel's new line (only re-letters the page "
                                                "unless --seed is given)")
    p.add_argument("--caption", default=None, help="with --panel: the panel's new caption (as --line)")
    add_overwrite_arg(p, "an existing storyboard in --out")
    add_model_args(p)
    p.set_defaults(func=cmd_storyboard)


def cmd_storyboard(args: argparse.Namespace) -> int:
    from charstudio.cli.generate_commands import load_studio, precheck
    from charstudio.cli.options import identity_settings
    from charstudio.cli.progress import StepBar
    from charstudio.errors import ConfigError
    from charstudio.io_utils import output_named
    from charstudio.storyboard import Storyboard, draw_storyboard, load_script, redraw_panel
    from charstudio.storyboard.board import check_out
    from charstudio.storyboard.panels import check_poses, load_cast

    # 1. Check everything cheap before loading a model.
    precheck(args)
    if args.min_identity is not None and str(args.min_identity).strip().lower() in ("none", "off"):
        args.min_identity = None
    identity = identity_settings(args)
    if args.panel is None:
        for flag in ("line", "caption"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag}", getattr(args, flag), "--panel N with it (it edits one panel)")
        script = load_script(args.script)
        load_cast(script)
        check_poses(script)
        out = check_out(args.out or "storyboard", args.overwrite, field="--out")
    else:
        board = Storyboard.load(args.script)
        out = args.out
        if out is not None:
            check_out(out, args.overwrite, field="--out")

    # 2. Draw, then say what was written.
    studio = load_studio(args)
    with StepBar("storyboard") as bar, output_named("--out", str(out or args.script), api_name="out"):
        if args.panel is None:
            board = draw_storyboard(studio, script, out=out, seed=args.seed, steps=args.steps,
                                    overwrite=args.overwrite, progress=bar, **identity)
        else:
            board = redraw_panel(studio, board, args.panel, seed=args.seed, line=args.line, caption=args.caption,
                                 min_identity=identity["min_identity"], max_tries=identity["max_tries"],
                                 scorer=identity["scorer"], out=out, progress=bar)
    folder = board.folder
    print(folder / "page.png" if folder is not None else "(not written)")
    for panel in board.panels:
        scores = ", ".join(f"{c['name']} {c['score']:.3f}" if c.get("score") is not None else c["name"]
                           for c in panel.characters)
        print(f"panel {panel.index + 1}: {scores} ({len(panel.tries)} tr{'y' if len(panel.tries) == 1 else 'ies'})")
    if board.note:
        print(board.note)
    return 0
