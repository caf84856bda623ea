"""What the tool scripts (convert.py, render.py) share: one-line errors and a clean Ctrl-C.

A user's bad input ends the tool with `error: <one line naming the file or option and the fix>` and
exit status 1, not a traceback (GS_TRACEBACK=1 shows the traceback too), as main.py does.
"""

from __future__ import annotations

import os
import sys
from typing import Callable


def run_tool(work: Callable[[], None], errors: tuple = (), interrupted: str = "interrupted") -> int:
    """Run `work()`; return the exit status (0, 1 on a user error, 130 on Ctrl-C)."""
    from .data.errors import DatasetError
    from .splats import PlyFormatError

    try:
        work()
    except (DatasetError, PlyFormatError, *errors) as exc:
        if os.environ.get("GS_TRACEBACK") == "1":
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    return 0
