"""Storyboards: a YAML script of panels (characters, pose, setting, shot, caption, line) drawn
with each character checked against its card, lettered onto a page (PNG and PDF).

    >>> board = draw_storyboard(studio, "prompts/storyboards/example.yaml", out="story")
    >>> board = redraw_panel(studio, "story", 3, line="Wait for me!")

`script` reads and checks scripts, `panels` turns a panel into a recipe and scores its
characters against their cards' anchors, `board` draws, re-rolls, saves and re-draws, `page`
letters the page.
"""

from .board import Storyboard, draw_storyboard, redraw_panel
from .script import SHOTS, Panel, Script, example_script, load_script

__all__ = ["SHOTS", "Panel", "Script", "Storyboard", "draw_storyboard", "example_script", "load_script", "redraw_panel"]
