"""Start-up: wall time from `python train.py` to the first optimizer step, measured by the run itself."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("transformers", "datasets", "tokenizers", "wandb", "matplotlib", "pandas")


def measure(repeats: int = 2) -> dict:
    """Median start-up of the default run (Collatz, model=small), from its summary.json."""
    values = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            proc = subprocess.run(
                [sys.executable, str(ROOT / "train.py"), "trainer.max_steps=2", "trainer.val_check_interval=1000",
                 f"paths.runs_root={tmp}", f"run_name=s{i}"],
                cwd=ROOT, capture_output=True, text=True, timeout=300,
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            values.append(json.loads((Path(tmp) / f"s{i}" / "summary.json").read_text())["startup_s"])
    values.sort()
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, lightning.pytorch, lm_lightning.train as t, lm_lightning.data.collatz, lm_lightning.module;"
         f"print([m for m in {HEAVY!r} if m in sys.modules])"],
        capture_output=True, text=True, timeout=120,
    )
    return {"startup_s": values[len(values) // 2], "all": values, "heavy_imported": probe.stdout.strip()}
