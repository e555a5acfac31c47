"""The ``gvsl`` command lines the modules run (DESIGN.md section 4), in one place.

Paths may be relative: jobs run in their job folder, where the modules write the inputs. The
``--progress json`` option is added by the job launcher. A test parses every command line built
here with gvsl's own argument parser, so a renamed option fails in CI, not in front of a user.
"""

from __future__ import annotations


def phantom_args(out: str, cases: int, size: int, seed: int = 0) -> list[str]:
    return ["phantom", out, "--cases", str(cases), "--size", str(size), "--seed", str(seed)]


def segment_args(input_path: str, output_path: str, model: str, device: str = "auto", fast: bool = False,
                 refine: bool = True) -> list[str]:
    args = ["segment", input_path, output_path, "--model", model, "--device", device]
    return args + (["--fast"] if fast else []) + ([] if refine else ["--no-refine"])


def register_args(fixed: str, moving: str, model: str, out: str, iterations: int = 40, device: str = "auto",
                  moving_labels: str | None = None) -> list[str]:
    # No qc.png: the panel shows the result in Slicer's own views (it is 2-3 s of the run on a CPU).
    args = ["register", fixed, moving, "--model", model, "--out", out, "--iterations", str(int(iterations)),
            "--device", device, "--no-qc"]
    return args + ["--moving-labels", moving_labels] if moving_labels else args


def pretrain_args(data: list[str], out: str, steps: int, patch: int, batch: int, width: int,
                  device: str = "auto") -> list[str]:
    return ["pretrain", "--data", *data, "--out", out, "--steps", str(steps), "--patch", str(patch),
            "--batch", str(batch), "--width", str(width), "--device", device]


def finetune_args(pretrained: str, images: str, labels: str, out: str, steps: int, patch: int, batch: int,
                  device: str = "auto", label_table: str | None = None, init: str | None = None,
                  run: str | None = None) -> list[str]:
    """Fine-tuning keeps the pre-trained network's width, so there is no width here. ``run`` is the
    run folder (checkpoints; gvsl's default is next to ``out``)."""
    # gvsl finetune takes --init (continue a fine-tuned model) or --pretrained (a backbone), not both.
    start = ["--init", init] if init else ["--pretrained", pretrained]
    args = ["finetune", *start, "--images", images, "--labels", labels, "--out", out,
            "--steps", str(steps), "--patch", str(patch), "--batch", str(batch), "--device", device]
    if run:
        args += ["--run", run]
    if label_table:
        args += ["--label-table", label_table]
    return args


def download_args(model_id: str) -> list[str]:
    return ["models", "download", model_id]


def list_models_args() -> list[str]:
    return ["models", "list", "--json"]
