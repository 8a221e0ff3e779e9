"""The entry point of :mod:`relprop.batch`: :func:`explain_images` checks a :class:`~.explain_folder.Job` and
explains it in this process (:mod:`.explain_folder`) or, with several processes or an accelerator, through
Lightning's predict loop (:mod:`.distributed`, imported only then)."""

from __future__ import annotations

import torch

from ..errors import UsageError
from .explain_folder import Job, Summary, explain_one_process


def _check_processes(job: Job) -> None:
    """Clear errors for process counts and accelerators that cannot run."""
    for name, value in (("--devices", job.devices), ("--num-nodes", job.num_nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(
                f"{name} {value!r}: must be a whole number of at least 1 (--devices: processes per machine, one "
                "per GPU with --accelerator gpu; --num-nodes: machines)"
            )
    if job.accelerator not in ACCELERATORS:
        raise UsageError(f"--accelerator {job.accelerator!r}: use one of {', '.join(ACCELERATORS)}")
    if job.accelerator in ("gpu", "cuda"):
        visible = torch.cuda.device_count()
        if visible == 0:
            raise UsageError(
                f"--accelerator {job.accelerator}: no CUDA GPU is visible here (torch.cuda.is_available() is "
                f"False); use --accelerator cpu (--devices {job.devices} then runs {job.devices} CPU processes)"
            )
        if job.devices > visible:
            raise UsageError(
                f"--devices {job.devices} with --accelerator {job.accelerator}: this machine has "
                f"{visible} GPU{'s' if visible != 1 else ''}; use --devices {visible} or fewer (per machine; "
                "--num-nodes for more machines)"
            )
    if job.accelerator == "mps" and (job.devices > 1 or not torch.backends.mps.is_available()):
        raise UsageError(
            f"--accelerator mps --devices {job.devices}: "
            + ("one MPS device at most" if torch.backends.mps.is_available() else "MPS is not available here")
            + "; use --devices 1, or --accelerator cpu"
        )


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def _resolved_accelerator(accelerator: str) -> str:
    if accelerator != "auto":
        return accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def explain_images(job: Job) -> Summary:
    """Explain ``job.images`` in batches, writing each batch's outputs and manifest lines as it finishes and
    skipping images an earlier run in ``job.out`` recorded (see the module docstring).

    With ``job.devices``/``job.num_nodes``/``job.accelerator`` other than one CPU process, Lightning's ``ddp``
    strategy starts this script (or command) again once per further process on this machine; every process
    explains its share of the batches and returns the summary of all. Each process computes exactly what one
    process would (same batches), so the files are the same bytes as a one-process run's on the same kind of
    device (the last bits can depend on the device and on the number of CPU threads, as on the batch size).

    Raises:
        UsageError: ``job.out`` holds results of other options (and not ``job.overwrite``), or is a file; bad
            ``batch_size``, ``workers``, ``devices``, ``num_nodes`` or ``accelerator`` (more GPUs than visible).
        DataError: an unreadable image with ``job.raise_unreadable``.
    """
    if job.batch_size < 1 or job.workers < 0:
        raise UsageError(f"--batch-size {job.batch_size} must be at least 1 and --workers {job.workers} at least 0")
    if job.out.exists() and not job.out.is_dir():
        raise UsageError(f"--out {job.out} is an existing file, not a folder: pass a folder (it is created if missing)")
    _check_processes(job)
    accelerator = _resolved_accelerator(job.accelerator)
    if job.devices == 1 and job.num_nodes == 1 and accelerator == "cpu":
        return explain_one_process(job)
    try:
        from .distributed import explain_distributed
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "lightning":
            raise
        raise UsageError(
            f"--devices {job.devices} --accelerator {job.accelerator} --num-nodes {job.num_nodes} runs Lightning's "
            "predict loop, and lightning is not installed: pip install 'relprop[train]' (or use one CPU process, "
            "the defaults)"
        ) from exc
    return explain_distributed(job, accelerator)


__all__ = ["ACCELERATORS", "explain_images"]
