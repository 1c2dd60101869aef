"""A run's log: the console (rich) plus timestamped plain lines appended to log.txt."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.text import Text


class Log:
    def __init__(self, path: Path | None, quiet: bool = False):
        self.console = Console(stderr=False, quiet=quiet, highlight=False)
        self.path = path  # None: lines are only kept in self.lines (a caller writes them at the end)
        self.lines: list[str] = []

    def __call__(self, msg: str, file_only: bool = False) -> None:
        """Print msg (rich markup) and append it to log.txt; file_only keeps it off the console."""
        if not file_only:
            self.console.print(msg)
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {Text.from_markup(msg).plain}"
        self.lines.append(line)
        if self.path is not None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
