"""``relprop explain`` on several CPU processes (gloo) for tests/test_explain_distributed.py.

python tests/_explain_worker.py phases BASE DEVICES -- ARGV...
    runs ``relprop explain ARGV --devices DEVICES`` three times on the same processes (Lightning's ddp starts this
    script again for the further ranks, which run the same phases), each into its own ``--out``:

    ``BASE/full``     the whole folder;
    ``BASE/stopped``  rank 0 sends itself SIGTERM after its 2nd batch; rank 1 waits after its 1st batch until the
                      stop flag is there (so exactly batches 0, 1 and 2 are done), then both stop;
    ``BASE/killed``   rank 1, after its 1st batch, appends a torn line to its shard and dies by SIGKILL; rank 0
                      dies by SIGKILL after its 2nd batch, once rank 1 is gone (no shard is folded in).

    Every phase's exit status goes to ``BASE/<phase>.status``; the time of the full run to ``BASE/full.seconds``.
python tests/_explain_worker.py once DEVICES -- ARGV...
    one ``relprop explain ARGV --devices DEVICES``; its exit status is this script's.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch


def _wait_for(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.01)


def _phases(base: str, devices: str, argv: list[str]) -> int:
    from relprop.batch.explain_folder import STOP_FLAG, _Run, shard_path
    from relprop.cli import main

    root = Path(base)
    phase = {"name": "", "batches": 0}
    original = _Run.explain_batch

    def explain_batch(self: _Run, batch):  # type: ignore[no-untyped-def]
        n = original(self, batch)
        phase["batches"] += 1
        k, out = phase["batches"], self.job.out
        if phase["name"] == "stopped":
            if self.rank == 0 and k == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            if self.rank == 1 and k == 1:
                _wait_for(out / STOP_FLAG)
        elif phase["name"] == "killed":
            if self.rank == 1 and k == 1:
                with open(shard_path(out, 1), "ab") as f:
                    f.write(b'{"image": "/torn/by/a/kill.png", "status": "o')
                    f.flush()
                    os.fsync(f.fileno())
                (root / "rank1.dying").touch()
                os.kill(os.getpid(), signal.SIGKILL)
            if self.rank == 0 and k == 2:
                _wait_for(root / "rank1.dying")
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGKILL)
        return n

    _Run.explain_batch = explain_batch  # type: ignore[method-assign]
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    for name in ("full", "stopped", "killed"):
        phase.update(name=name, batches=0)
        start = time.perf_counter()
        code = main([*argv, "--out", str(root / name), "--devices", devices])
        if rank == 0:
            (root / f"{name}.status").write_text(str(code))
            if name == "full":
                (root / "full.seconds").write_text(f"{time.perf_counter() - start:.3f}")
    return 1  # not reached: the killed phase ends every process


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, *rest = sys.argv[1:]
    split = rest.index("--")
    head, argv = rest[:split], rest[split + 1 :]
    if mode == "phases":
        status = _phases(head[0], head[1], argv)
    else:
        from relprop.cli import main

        status = main([*argv, "--devices", head[0]])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # skip the interpreter's slow teardown of torch and Lightning
