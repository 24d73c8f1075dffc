"""What every command's ``main()`` shares (the DVC stages, ``htr``): logging, and errors
as one clear line instead of a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError


def run_command(name: str, work: Callable[[], object]) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(levelname)s %(message)s")
    try:
        work()
    except KeyboardInterrupt:
        print(
            f"[{name}] interrupted: outputs were left as they were; rerun to start again",
            file=sys.stderr,
        )
        sys.exit(130)
    except (PipelineError, FileNotFoundError) as error:
        print(f"[{name}] error: {error}", file=sys.stderr)
        sys.exit(1)
