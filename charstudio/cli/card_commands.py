"""`charstudio card new|show|check`: character cards (version 2, the character bible) on the
command line. A bad card exits with code 2 and one line naming the file and the field."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("card", help="make, show or check a character card",
                       description="Character cards (prompts/characters/NAME.yaml): make one, show one, check one.")
    cmds = p.add_subparsers(dest="card_command", metavar="ACTION", required=True)
    new = cmds.add_parser("new", help="write a new card", description="Write prompts/characters/NAME.yaml "
                          "(in the working folder, or --dir), from a description or from another card (--from).")
    new.add_argument("name", help="the new card's name (lowercase letters, digits, '-' or '_')")
    new.add_argument("--description", help="what the character is, e.g. 'a girl'")
    new.add_argument("--from", dest="base", metavar="CARD", help="copy this card (name or .yaml), comments included")
    new.add_argument("--trigger", help="the LoRA trigger word")
    new.add_argument("--dir", default="prompts/characters", help="folder to write into (default prompts/characters)")
    new.add_argument("--overwrite", action="store_true", help="replace an existing card file of that name")
    new.set_defaults(func=cmd_new)
    show = cmds.add_parser("show", help="print a card: words, wardrobe, expressions, payloads, identity history")
    show.add_argument("card", help="a card name or .yaml file")
    show.set_defaults(func=cmd_show)
    check = cmds.add_parser("check", help="validate a card (exit 2 naming the field at fault)")
    check.add_argument("card", help="a card name or .yaml file")
    check.set_defaults(func=cmd_check)


def cmd_new(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from charstudio.cast.card import Character
    from charstudio.cast.library import load_character
    from charstudio.cast.yaml_io import write_card

    path = Path(args.dir).expanduser() / f"{args.name}.yaml"
    if args.base:
        base = load_character(args.base, field="--from")
        changes: dict[str, Any] = {"name": args.name}
        if args.description is not None:
            changes["description"] = args.description
        if args.trigger is not None:
            changes["trigger"] = args.trigger
        card, template = replace(base, **changes), base.source
    else:
        card = Character(name=args.name, description=args.description or "", trigger=args.trigger)
        template = None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_card(card, path, overwrite=args.overwrite, template=template)
    print(path)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from charstudio.cast.fields import FAMILIES, outfit_text
    from charstudio.cast.library import load_character

    card = load_character(args.card, field="card")
    print(f"{card.name}  ({card.source})")
    print(f"  words:       {card.words()}")
    for label, value in (("keep", ", ".join(card.keep)), ("style", card.style), ("seed", card.seed),
                         ("palette", ", ".join(f"{k} {v}" for k, v in card.palette.items())),
                         ("references", ", ".join(card.references))):
        if value not in (None, ""):
            print(f"  {label + ':':12s} {value}")
    if card.wardrobe:
        print("  wardrobe:")
        for name, slots in card.wardrobe.items():
            print(f"    {name:10s} {outfit_text(slots)}")
    if card.expressions:
        print("  expressions:")
        for name, words in card.expressions.items():
            print(f"    {name:10s} {words}")
    print("  payloads:")
    for family in (None, *FAMILIES):
        payload = card.payload(family)
        text = ", ".join(f"{k} {v}" for k, v in payload.to_dict().items() if k != "family") if payload else "-"
        print(f"    {family or 'any':10s} {text}")
    if card.identity_history:
        print("  identity history:")
        for entry in card.identity_history:
            print("    " + ", ".join(f"{k} {entry[k]}" for k in ("date", "sheet", "scorer", "mean", "min") if k in entry))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import sys

    from charstudio.cast.library import load_character

    card = load_character(args.card, field="card")
    missing = [r for r in card.references if not _reference(card, r).is_file()]
    for ref in missing:
        print(f"warning: {card.source}: references: {ref!r} is not a file", file=sys.stderr)
    print(f"ok: {card.source} ({card.name}: {len(card.wardrobe)} outfits, {len(card.expressions)} expressions, "
          f"payloads for {', '.join(card.families) or 'any family'})")
    return 0


def _reference(card: Any, ref: str) -> Path:
    """A reference picture's path: as written, or relative to the card's folder."""
    p = Path(ref).expanduser()
    return p if p.is_absolute() or p.is_file() or card.source is None else Path(card.source).parent / p
