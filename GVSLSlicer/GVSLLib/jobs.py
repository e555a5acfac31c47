"""Background jobs that keep running when Slicer closes: the one import the modules use.

A job is a folder (layout in :mod:`.jobfiles`, under ``$GVSL_HOME/jobs`` by default).
:func:`start_job` (:mod:`.joblaunch`) launches a small *supervisor* (:mod:`.jobsupervisor`, run as a
script, standard library only) detached from the caller: a new session on POSIX, a new process
group on Windows. The supervisor starts the real command in a process group of its own, waits for
it and writes the final status with the exit code, so the outcome is recorded even when nobody is
watching. Slicer only reads the folder: :meth:`Job.poll` (:mod:`.jobwatch`) from a timer,
:func:`attach` / :func:`list_jobs` after a restart. Liveness and signals: :mod:`.jobprocess`.

Cancel: the supervisor sends SIGTERM to the command's whole process group (training commands save a
checkpoint and exit with 143), then SIGKILL after a grace period. If the supervisor itself is gone,
:meth:`Job.cancel` and :meth:`Job.poll` signal the group directly.

The first argv element may be :data:`PYTHON`: the supervisor replaces it with its own interpreter.
"""

from __future__ import annotations

from .jobfiles import (
    ACTIVE_STATES,
    CANCEL_FILE,
    DEFAULT_GRACE_S,
    EVENTS_FILE,
    FINAL_STATES,
    JOB_FILE,
    LOG_FILE,
    PYTHON,
    SIGNAL_EXIT_CODES,
    START_TIMEOUT_S,
    STATUS_FILE,
    default_jobs_root,
    gvsl_argv,
    gvsl_home,
    log_tail,
)
from .joblaunch import (
    SUPERVISOR,
    attach,
    create_job,
    list_jobs,
    remove_job,
    restart_job,
    start_job,
)
from .jobprocess import (
    IS_WINDOWS,
    QuickCommand,
    group_alive,
    pid_alive,
    process_start_token,
)
from .jobsupervisor import supervise
from .jobwatch import Job, JobSummary

__all__ = [
    "ACTIVE_STATES",
    "CANCEL_FILE",
    "DEFAULT_GRACE_S",
    "EVENTS_FILE",
    "FINAL_STATES",
    "IS_WINDOWS",
    "JOB_FILE",
    "LOG_FILE",
    "PYTHON",
    "SIGNAL_EXIT_CODES",
    "START_TIMEOUT_S",
    "STATUS_FILE",
    "SUPERVISOR",
    "Job",
    "JobSummary",
    "QuickCommand",
    "attach",
    "create_job",
    "default_jobs_root",
    "group_alive",
    "gvsl_argv",
    "gvsl_home",
    "list_jobs",
    "log_tail",
    "pid_alive",
    "process_start_token",
    "remove_job",
    "restart_job",
    "start_job",
    "supervise",
]
