"""Start `python -m gvslcore ...` as a real child process (for the signal and resume tests).

Not a test module; the tests import it (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import os
import subprocess
import sys


def start_gvsl(argv: list[str]) -> subprocess.Popen:
    """The command runs unbuffered; stdout is dropped, stderr is kept for the test to read."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "gvslcore", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
