"""`charstudio verify PIC...`: each picture's recipe, invisible watermark and C2PA manifest
(`provenance.verify.verify_picture`; this module only prints).

Exit status: 0 when every picture carries provenance (the watermark, or a manifest with a valid
signature) and, with ``--rerun``, its recipe reproduces it; 1 when one does not; 2 for an error
(a file that is missing or not a picture).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("verify", help="check pictures for charstudio's watermark, C2PA manifest and recipe",
                       description="For each picture: the recipe in its PNG text, the invisible watermark (and "
                                   "whether its payload is the recipe's), and the C2PA manifest (signature, signer, "
                                   "actions, ingredients). Exits 0 when every picture carries the watermark or a "
                                   "validly signed manifest (and, with --rerun, re-running its recipe gives the "
                                   "same pixels), else 1.")
    v.add_argument("pictures", nargs="+", metavar="PIC", help="picture files (PNG, JPEG, ...)")
    v.add_argument("--rerun", action="store_true", help="also run each recipe again on its model and compare pixels")
    v.add_argument("--json", action="store_true", help="print one JSON object per picture instead of text")
    v.add_argument("--trust", default=None, metavar="PEM",
                   help="a PEM file of root certificates to trust (default: $CHARSTUDIO_C2PA_TRUST); without one "
                        "a valid signature reads 'signer not in a trust list'")
    v.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    import json

    from charstudio.io_utils import read_text
    from charstudio.provenance.verify import verify_picture

    anchors = read_text(args.trust, "--trust") if args.trust else None
    studios: dict[str, object] = {}

    def studio_for(model: str):  # one load per model, however many pictures name it
        if model not in studios:
            from charstudio import Studio

            studios[model] = Studio.from_pretrained(model)
        return studios[model]

    ok = True
    for path in args.pictures:
        report = verify_picture(path, rerun=args.rerun, studio_for=studio_for, trust_anchors=anchors)
        ok = ok and report.ok
        print(json.dumps(report.to_dict()) if args.json else "\n".join(report.lines()), flush=True)
    return 0 if ok else 1
