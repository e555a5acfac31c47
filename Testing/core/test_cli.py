"""The command line: every command of DESIGN.md is there with the shared options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gvslcore.cli import build_parser, main

COMMANDS = ["phantom", "pretrain", "finetune", "segment", "register", "evaluate", "models", "demo"]


def subcommands(parser):
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_command_is_listed_with_progress_and_device():
    subs = subcommands(build_parser())
    assert set(COMMANDS) <= set(subs)
    for name in COMMANDS:
        if name == "models":
            continue
        options = {o for a in subs[name]._actions for o in a.option_strings}
        assert {"--progress", "--device"} <= options, name
    for name in ("pretrain", "finetune"):
        options = {o for a in subs[name]._actions for o in a.option_strings}
        assert {"--steps", "--patch", "--batch", "--width", "--lr", "--resume"} <= options, name
    models = subcommands(subs["models"])
    assert {"list", "info", "install", "download", "import-gvsl"} <= set(models)


def test_json_progress_is_one_object_per_line_and_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gvslcore", "phantom", str(tmp_path / "p"), "--cases", "2", "--size", "24",
                           "--seed", "1", "--progress", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    bad = subprocess.run([sys.executable, "-m", "gvslcore", "pretrain", "--data", str(tmp_path / "nothing"), "--out",
                          str(tmp_path / "run"), "--progress", "json"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert json.loads(bad.stdout.strip().splitlines()[-1])["event"] == "error"
    assert not (tmp_path / "run").exists()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "pretrain" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["pretrain", "--steps", "x"], ["segment"]])
def test_argument_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_building_the_command_line_does_not_import_torch():
    """`gvsl --help`, `gvsl models info` and argument errors answer at once (Slicer calls them from
    its GUI): torch (seconds to import) loads only when a command needs it."""
    import subprocess
    import sys

    code = "import sys; from gvslcore.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
