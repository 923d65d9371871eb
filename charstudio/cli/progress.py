"""Progress bars for the command line (tqdm on stderr)."""

from __future__ import annotations

from typing import Any


class StepBar:
    """A tqdm bar fed by `StepProgress` records; use as `progress=` and close when done."""

    def __init__(self, desc: str = "generating", disable: bool | None = None):
        self.desc = desc
        self.disable = disable
        self.bar: Any = None

    def __call__(self, p: Any) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=p.images * p.steps, desc=self.desc, unit="step", disable=self.disable, leave=False)
        self.bar.n = p.done
        last = p.image + p.batch - 1
        self.bar.set_postfix_str(f"image {p.image}{f'-{last}' if last > p.image else ''}/{p.images}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "StepBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
