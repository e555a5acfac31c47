"""The background-job helper (GVSLSlicer/GVSLLib/jobs.py) against real ``gvsl`` processes.

Jobs run ``python -m gvslcore`` with PYTHONPATH pointing at GVSLCore, as the extension runs the
bundled copy with PythonSlicer. Covered: progress parsing, failure reporting (with and without an
error event), cancel of the whole process tree (SIGTERM, then SIGKILL after the grace period),
re-attaching to a job whose launcher exited, and a supervisor that died while its command ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from GVSLLib import deps, events, jobs
from slicer_testpaths import SLICER_DIR

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")

ENV = deps.job_environment(deps.gvslcore_root(SLICER_DIR))


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def start(root: Path, kind: str, argv: list[str]) -> jobs.Job:
    job = jobs.create_job(root, kind, f"test {kind}")
    return jobs.start_job(job, argv, env=ENV)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, jobs.Job]:
    """Three real gvsl jobs run side by side: one succeeds, two fail in different ways."""
    root = tmp_path_factory.mktemp("jobs")
    blocker = root / "a_file"
    blocker.write_text("not a folder")
    started = {
        "ok": start(root, "phantom", jobs.gvsl_argv("phantom", "phantoms", "--cases", "3", "--size", "16",
                                                    "--seed", "1", "--progress", "json")),
        "bad_input": start(root, "phantom", jobs.gvsl_argv("phantom", str(blocker / "out"), "--cases", "1",
                                                           "--progress", "json")),
        "bad_command": start(root, "nonsense", jobs.gvsl_argv("no-such-command", "--progress", "json")),
    }
    for job in started.values():
        job.wait(timeout=180)
    return started


def test_progress_events_are_parsed(finished: dict[str, jobs.Job]) -> None:
    job = finished["ok"]
    assert job.status == "done", job.log_tail()
    info = job.status_info()
    assert info["returncode"] == 0 and info["message"] is None
    progress = job.progress
    assert progress.command == "phantom"
    assert progress.total == 3 and progress.step == 3 and progress.fraction == 1.0
    assert progress.stage == "case 3/3"
    assert progress.error is None
    images = Path(progress.outputs["images"])
    if not images.is_absolute():
        images = job.folder / images
    assert len(list(images.glob("case_*.nii.gz"))) == 3
    # The file holds exactly the protocol: every line is one event, in order.
    lines = job.events_path.read_text().splitlines()
    parsed = [events.parse_event_line(line) for line in lines]
    assert all(parsed), lines
    assert [e["event"] for e in parsed] == ["start", "progress", "progress", "progress", "done"]
    assert job.progress.describe() == "Done"
    summary = job.summary()
    assert (summary.status, summary.step, summary.total, summary.kind) == ("done", 3, 3, "phantom")


def test_bad_input_is_reported_from_the_error_event(finished: dict[str, jobs.Job]) -> None:
    job = finished["bad_input"]
    assert job.status == "failed"
    info = job.status_info()
    assert info["returncode"] == 2
    assert "cannot create output folder" in info["message"]
    assert job.progress.error == info["message"]
    log = job.log_tail(50)
    assert "Traceback" not in log
    assert "gvsl phantom: error:" in log


def test_failure_without_error_event_reports_stderr(finished: dict[str, jobs.Job]) -> None:
    job = finished["bad_command"]
    assert job.status == "failed"
    info = job.status_info()
    assert info["returncode"] == 2
    assert "invalid choice" in info["message"]
    assert job.progress.events == 0


def test_list_jobs_newest_first(finished: dict[str, jobs.Job]) -> None:
    root = finished["ok"].folder.parent
    listed = jobs.list_jobs(root)
    assert [j.id for j in listed] == [finished[k].id for k in ("bad_command", "bad_input", "ok")]
    assert {j.status for j in listed} == {"done", "failed"}


def test_cancel_stops_the_whole_gvsl_process_tree(tmp_path: Path) -> None:
    job = start(tmp_path, "phantom", jobs.gvsl_argv("phantom", "phantoms", "--cases", "500", "--size", "32",
                                                    "--progress", "json"))
    wait_for(lambda: job.poll() == "running" and job.progress.step >= 1, timeout=120)
    info = job.status_info()
    assert jobs.pid_alive(info["pid"]) and jobs.group_alive(info["child_pgid"])
    job.cancel(grace_s=5.0)
    assert job.wait(timeout=60) == "cancelled"
    info = job.status_info()
    assert info["message"] == "cancelled"
    assert not jobs.pid_alive(info["pid"], info["pid_start"])
    assert not jobs.pid_alive(info["child_pid"], info["child_start"])
    assert not jobs.group_alive(info["child_pgid"])
    assert 1 <= job.progress.step < 500
    assert job.progress.outputs is None


TREE_SCRIPT = textwrap.dedent("""
    import json, subprocess, sys, time, signal
    if len(sys.argv) > 2 and sys.argv[2] == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    open(sys.argv[1], "w").write(str(child.pid))
    print(json.dumps({"event": "start", "command": "tree", "total": 100}), flush=True)
    for step in range(1, 101):
        time.sleep(0.2)
        print(json.dumps({"event": "progress", "step": step, "total": 100}), flush=True)
""")


@pytest.mark.parametrize("stubborn", [False, True], ids=["sigterm", "sigkill-after-grace"])
def test_cancel_reaches_grandchildren(tmp_path: Path, stubborn: bool) -> None:
    script = tmp_path / "tree.py"
    script.write_text(TREE_SCRIPT)
    pid_file = tmp_path / "grandchild.pid"
    argv = [jobs.PYTHON, str(script), str(pid_file)] + (["stubborn"] if stubborn else [])
    job = start(tmp_path, "tree", argv)
    wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip() != "", timeout=30)
    grandchild = int(pid_file.read_text())
    assert jobs.pid_alive(grandchild)
    job.cancel(grace_s=1.0)
    assert job.wait(timeout=30) == "cancelled"
    wait_for(lambda: not jobs.pid_alive(grandchild), timeout=10)
    assert not jobs.group_alive(job.status_info()["child_pgid"])
    if stubborn:
        assert "did not stop in time" in job.log_tail()


def test_reattach_to_a_job_that_outlived_its_launcher(tmp_path: Path) -> None:
    launcher_code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SLICER_DIR)!r})
        from GVSLLib import jobs
        job = jobs.create_job({str(tmp_path)!r}, "phantom", "launched elsewhere")
        jobs.start_job(job, jobs.gvsl_argv("phantom", "phantoms", "--cases", "40", "--size", "32", "--progress", "json"),
                       env={ENV!r})
        print(job.folder)
    """)
    launcher = subprocess.run([sys.executable, "-c", launcher_code], capture_output=True, text=True, timeout=60, check=True)
    folder = Path(launcher.stdout.strip())
    job = jobs.attach(folder)
    assert job._proc is None  # nothing links this process to the job but its folder
    assert job.status in jobs.ACTIVE_STATES, job.log_tail()
    assert job.is_alive()
    assert job.title == "launched elsewhere"
    assert job.wait(timeout=180) == "done", job.log_tail()
    assert job.progress.total == 40 and job.progress.step == 40
    assert [j.id for j in jobs.list_jobs(tmp_path)] == [job.id]


FAKE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    steps = int(sys.argv[1])
    first = 11 if "--resume" in sys.argv else 1
    print(json.dumps({"event": "start", "command": "fake", "total": steps, "step": first - 1}), flush=True)
    for step in range(first, steps + 1):
        time.sleep(0.05)
        print(json.dumps({"event": "progress", "step": step, "total": steps, "loss": {"a": 1.0 / step, "b": 0.5}}), flush=True)
    print("finished", file=sys.stderr)
    print(json.dumps({"event": "done", "outputs": {"steps": steps}}), flush=True)
""")


def test_supervisor_killed_while_command_runs(tmp_path: Path) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SCRIPT)
    job = start(tmp_path, "fake", [jobs.PYTHON, str(script), "40"])
    wait_for(lambda: job.poll() == "running" and job.status_info().get("child_pid"), timeout=30)
    info = job.status_info()
    os.kill(info["pid"], signal.SIGKILL)
    job._proc.wait()
    assert job.poll() == "running" and job.is_alive()  # the command lives on in its own group
    assert job.wait(timeout=60) == "done"
    assert json.loads((job.folder / jobs.STATUS_FILE).read_text())["status"] == "done"
    assert job.progress.step == 40


def test_everything_killed_without_a_final_status(tmp_path: Path) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SCRIPT)
    job = start(tmp_path, "fake", [jobs.PYTHON, str(script), "200"])
    wait_for(lambda: job.poll() == "running" and job.status_info().get("child_pid"), timeout=30)
    info = job.status_info()
    os.killpg(info["child_pgid"], signal.SIGKILL)
    os.kill(info["pid"], signal.SIGKILL)
    job._proc.wait()
    assert job.wait(timeout=30) == "failed"
    assert "ended without reporting" in job.status_info()["message"]


def test_resume_appends_to_the_same_job(tmp_path: Path) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SCRIPT)
    job = start(tmp_path, "fake", [jobs.PYTHON, str(script), "14"])
    assert job.wait(timeout=60) == "done"
    jobs.restart_job(job)
    assert job.spec["argv"][-1] == "--resume" and job.spec["attempts"] == 2
    assert job.wait(timeout=60) == "done"
    assert job.progress.starts == 2
    steps = [p.step for p in job.progress.history]
    assert steps == list(range(1, 15)) + list(range(11, 15))
    assert job.summary().loss == pytest.approx(1.0 / 14 + 0.5)
    with pytest.raises(RuntimeError):
        jobs.remove_job(jobs.start_job(job, [jobs.PYTHON, "-c", "import time; time.sleep(5)"]))
    job.cancel(grace_s=1.0)
    job.wait(timeout=30)
    jobs.remove_job(job)
    assert not job.folder.exists()


def test_quick_command_and_device_probe() -> None:
    command = jobs.QuickCommand(jobs.gvsl_argv("--version"), env=ENV)
    probe = deps.DeviceProbe(sys.executable, ENV)  # both run at once
    assert command.wait(timeout=120) == 0
    assert command.stdout.startswith("gvsl ")
    info = probe.wait(timeout=120)
    assert info.torch is not None and info.error is None
    assert isinstance(info.cuda, bool)
    assert ("GPU:" in info.summary()) == info.cuda
    assert deps.device_argument("cuda", info) == ("cuda" if info.cuda else "cpu")
