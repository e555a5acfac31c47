"""Python dependencies of gvslcore in Slicer's Python, the interpreter that runs jobs, and devices.

Slicer's Python (the one PythonSlicer runs) needs what ``GVSLCore/pyproject.toml`` lists. torch is
installed through the PyTorch extension (PyTorchUtils picks the build that fits the GPU driver);
the rest with ``slicer.util.pip_install``, after one confirmation that lists everything. This file
only decides *what* is missing and *how* to run things; the dialogs live in the Slicer modules.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .jobs import QuickCommand


@dataclass(frozen=True)
class Requirement:
    """One dependency.

    Attributes:
        dist: the distribution name on PyPI.
        spec: a version specifier such as ``'>=2.1'`` (only >=, >, <=, <, == and != are understood).
        via: 'pytorch' (install through the PyTorch extension) or 'pip'.
    """

    dist: str
    spec: str = ""
    via: str = "pip"

    @property
    def pip_spec(self) -> str:
        return f"{self.dist}{self.spec}"


# Keep in step with GVSLCore/pyproject.toml [project].dependencies (a test checks it).
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", ">=2.1", via="pytorch"),
    Requirement("numpy", ">=1.23"),
    Requirement("SimpleITK", ">=2.2"),
    Requirement("safetensors", ">=0.4"),
    Requirement("tqdm", ">=4.60"),
    Requirement("slicerio", ">=1.1"),
    Requirement("scipy", ">=1.9"),
    Requirement("pillow", ">=10.1"),
)


def parse_requirement(text: str) -> Requirement:
    """``'torch>=2.1'`` -> Requirement('torch', '>=2.1'); markers and extras are dropped."""
    text = text.split(";")[0].strip()
    match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", text)
    if not match:
        raise ValueError(f"cannot parse requirement {text!r}")
    name, _, spec = match.groups()
    return Requirement(name, spec.replace(" ", ""), via="pytorch" if name.lower() == "torch" else "pip")


def _version_tuple(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0); pre-release tags are ignored."""
    parts = []
    for piece in re.split(r"[.+]", version):
        match = re.match(r"^(\d+)", piece)
        if not match:
            break
        parts.append(int(match.group(1)))
    return tuple(parts)


def version_satisfies(version: str, spec: str) -> bool:
    """Whether ``version`` meets every clause of ``spec`` (``'>=1.23,<3'``)."""
    have = _version_tuple(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        match = re.match(r"^(>=|<=|==|!=|>|<|~=)\s*(.+)$", clause)
        if not match:
            raise ValueError(f"unsupported version specifier {clause!r}")
        op, want_text = match.groups()
        want = _version_tuple(want_text)
        n = max(len(have), len(want))
        a, b = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
        ok = {
            ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "==": a == b, "!=": a != b,
            "~=": a >= b and a[: max(len(want) - 1, 1)] == b[: max(len(want) - 1, 1)],
        }[op]
        if not ok:
            return False
    return True


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: tuple[Requirement, ...] = REQUIREMENTS) -> list[Requirement]:
    """Requirements that are absent or too old in *this* interpreter (Slicer's Python in Slicer)."""
    missing = []
    for req in requirements:
        version = installed_version(req.dist)
        if version is None or (req.spec and not version_satisfies(version, req.spec)):
            missing.append(req)
    return missing


def confirmation_text(missing: list[Requirement]) -> tuple[str, str]:
    """(question, details) for the one confirmation dialog shown before installing anything."""
    lines = []
    for req in missing:
        have = installed_version(req.dist)
        state = f"installed {have}, needs {req.spec}" if have else "not installed"
        how = "through the PyTorch extension (picks the build for your GPU)" if req.via == "pytorch" else "with pip"
        lines.append(f"- {req.pip_spec}: {state}; installed {how}")
    question = (
        "GVSL needs these Python packages in Slicer's Python environment:\n\n"
        + "\n".join(lines)
        + "\n\nDownloading them can take several minutes (PyTorch is about 1-3 GB). Install now?"
    )
    details = "pip install " + " ".join(r.pip_spec for r in missing if r.via == "pip")
    return question, details


# -- where things are ---------------------------------------------------------------------------
def gvslcore_root(module_dir: str | os.PathLike) -> Path | None:
    """The folder that contains the bundled ``gvslcore`` package, or None if it is not bundled.

    Installed extension: ``<qt-scripted-modules>/GVSLCore/gvslcore``; source tree: ``<repo>/GVSLCore``.
    """
    module_dir = Path(module_dir).resolve()
    for candidate in (module_dir / "GVSLCore", module_dir.parent / "GVSLCore"):
        if (candidate / "gvslcore" / "__init__.py").is_file():
            return candidate
    return None


def python_executable(slicer_home: str | os.PathLike | None = None) -> str:
    """The interpreter for jobs: PythonSlicer inside Slicer, this interpreter elsewhere."""
    if slicer_home is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        candidate = Path(slicer_home) / "bin" / name
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def job_environment(core_root: str | os.PathLike | None) -> dict[str, str]:
    """Environment overrides for a job: the bundled gvslcore first on PYTHONPATH, unbuffered output."""
    env = {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    if core_root is not None:
        parts = [str(core_root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


# -- devices ------------------------------------------------------------------------------------
DEVICE_CHOICES = (("auto", "Auto (GPU if available)"), ("cuda", "GPU (CUDA)"), ("cpu", "CPU"))

_PROBE_SCRIPT = r"""
import json
info = {"torch": None, "cuda": False, "cuda_name": None, "cuda_memory_gb": None, "mps": False}
try:
    import torch
    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(cuda=True, cuda_name=props.name, cuda_memory_gb=round(props.total_memory / 2**30, 1))
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = bool(mps and mps.is_available())
except Exception as exc:
    info["error"] = f"{type(exc).__name__}: {exc}"
print("GVSL_DEVICES " + json.dumps(info))
"""


@dataclass
class DeviceInfo:
    """What the job interpreter's torch sees."""

    torch: str | None = None
    cuda: bool = False
    cuda_name: str | None = None
    cuda_memory_gb: float | None = None
    mps: bool = False
    error: str | None = None

    @property
    def has_gpu(self) -> bool:
        return self.cuda

    def summary(self) -> str:
        if self.torch is None:
            return "PyTorch is not installed yet" + (f" ({self.error})" if self.error else "")
        if self.cuda:
            memory = f", {self.cuda_memory_gb:g} GB" if self.cuda_memory_gb else ""
            return f"GPU: {self.cuda_name}{memory} (PyTorch {self.torch})"
        return (f"No CUDA GPU found (PyTorch {self.torch}): GVSL runs on the CPU. "
                "That works, only slower: use fast mode for segmentation and few steps for training.")


def device_probe_command(python: str) -> list[str]:
    return [python, "-c", _PROBE_SCRIPT]


def parse_device_probe(output: str) -> DeviceInfo:
    for line in output.splitlines():
        if line.startswith("GVSL_DEVICES "):
            data = json.loads(line[len("GVSL_DEVICES "):])
            return DeviceInfo(**{k: data.get(k) for k in DeviceInfo.__dataclass_fields__ if k in data})
    return DeviceInfo(error="the device probe printed nothing")


class DeviceProbe:
    """Asks the job interpreter which devices torch sees, without blocking (poll it from a timer)."""

    def __init__(self, python: str, env: dict[str, str] | None = None) -> None:
        self._command = QuickCommand(device_probe_command(python), env=env)
        self.result: DeviceInfo | None = None

    def poll(self) -> DeviceInfo | None:
        """The result once the probe finished, else None."""
        if self.result is None and self._command.poll():
            self.result = parse_device_probe(self._command.stdout)
        return self.result

    def wait(self, timeout: float = 120.0) -> DeviceInfo:
        self._command.wait(timeout)
        result = self.poll()
        assert result is not None
        return result


def device_argument(choice: str, info: DeviceInfo | None) -> str:
    """The ``--device`` value for a UI choice; 'cuda' without a GPU falls back to 'cpu'."""
    if choice == "cuda" and info is not None and info.torch is not None and not info.cuda:
        return "cpu"
    return choice if choice in ("auto", "cuda", "cpu") else "auto"
