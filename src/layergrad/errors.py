"""Expected errors end the command with their message and exit code 2, not a traceback."""
from __future__ import annotations

import sys


def expected_errors() -> tuple[type, ...]:
    from .capture import CaptureError
    from .data import DataError
    from .distributed import DistributedError
    from .experiment import ExperimentError
    from .ifd import IFDError
    from .models import ModelError
    from .modules import SelectionError
    from .prompting import PromptError
    from .reference import ReferenceFormatError
    from .store import ConfigMismatch
    from .store.parts import StoreWriteError  # disk full, no permission: names the path and the cause

    return (CaptureError, DataError, DistributedError, ExperimentError, IFDError, ModelError, SelectionError, PromptError,
            ReferenceFormatError, ConfigMismatch,
            StoreWriteError, FileNotFoundError)


def friendly(func, args) -> int:
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; results stored so far are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except expected_errors() as e:
        print(f"layergrad: error: {e}", file=sys.stderr)
        return 2
