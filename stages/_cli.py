"""What every stage's ``main()`` shares: logging, and errors as one clear line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError


def run(stage: str, work: Callable[[], object]) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(levelname)s %(message)s")
    try:
        work()
    except KeyboardInterrupt:
        print(
            f"[{stage}] interrupted: outputs were left as they were; rerun to start again",
            file=sys.stderr,
        )
        sys.exit(130)
    except (PipelineError, FileNotFoundError) as error:
        print(f"[{stage}] error: {error}", file=sys.stderr)
        sys.exit(1)
