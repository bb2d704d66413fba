"""The command line of `python -m finetune.pipeline`, the child process the bot's retraining
starts: the pipeline tests (tests/finetune/test_pipeline.py) and the fine-tuning bench
(bench/finetune_effect.py) start it the same way, so a change to its flags is made here once."""

from __future__ import annotations

import sys
from pathlib import Path


def pipeline_command(export: Path, job_dir: Path, cache: Path, config: Path) -> list[str]:
    """Train on `export` in `job_dir` with the base model in `cache` and the settings in `config`."""
    flags = {"--export": export, "--job-dir": job_dir, "--cache": cache, "--config": config}
    return [
        sys.executable,
        "-m",
        "finetune.pipeline",
        *(part for flag, path in flags.items() for part in (flag, str(path))),
    ]
