"""``python -m gvslcore._torchrun ARGS``: torchrun, quiet when it is told to stop.

torchrun turns SIGINT/SIGTERM into a ``SignalException`` that it leaves uncaught, so every cancel
of a multi-process run printed a 20-line traceback after the workers had already checkpointed and
stopped cleanly. Here that exception becomes the usual ``128 + signal`` exit code; every other
failure (a worker that crashed) keeps torchrun's own report.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
