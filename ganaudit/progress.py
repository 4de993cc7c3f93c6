"""Progress bars on a terminal, silence elsewhere (CI logs stay clean)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int, label: str, enabled: bool | None):
    """A tqdm bar on stderr; ``enabled=None`` shows it only when stderr is a terminal."""
    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, desc=label, unit="img", disable=disable, leave=False, file=sys.stderr)
