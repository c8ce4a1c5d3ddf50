"""Two CPU processes (gloo) give the same contrastive loss, gradients and BI-BAU training losses as one, and keep
triggers in sync."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(worker: str, processes: int, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
         str(ROOT / "tests" / worker), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(": ok") == processes
    return proc


def test_one_and_two_processes_give_the_same_losses_and_identical_triggers():
    launch("distributed_worker.py", 2)


def test_bibau_training_losses_match_between_one_and_two_processes(tmp_path):
    runs = {}
    for processes in (1, 2):
        launch("trainer_worker.py", processes, str(tmp_path / f"{processes}.json"))
        runs[processes] = json.loads((tmp_path / f"{processes}.json").read_text())
    # Two GPU-less processes run over gloo on their own (the trainer switched itself to the CPU) ...
    assert runs[2]["world_size"] == 2 and runs[2]["use_cpu"]
    # ... and the mean of their M-step losses is the one-process loss, step by step, through optimizer steps.
    assert len(runs[1]["losses"]) == len(runs[2]["losses"]) == 3
    for one, two in zip(runs[1]["losses"], runs[2]["losses"]):
        assert abs(one - two) <= 1e-4 * max(1.0, abs(one)), (runs[1]["losses"], runs[2]["losses"])
