"""The file-to-file part of retraining, top to bottom, with no bot around it:

    exported rated turns ─▶ dataset (scrubbed, split, card) ─▶ LoRA training ─▶ GGUF LoRA

    python -m finetune.pipeline --export ratings.jsonl --names names.txt --job-dir jobs/ID

It runs as a child process of the bot (or of `deskmate worker`, or as a Kubernetes Job on a GPU
node). The bot then has the candidate answer the held-out turns through its real orchestrator
(`finetune.evaluate` scores them and decides), and registers and promotes it (`finetune.registry`).

Everything lands in the job folder. Rerunning into the same folder resumes: a finished dataset
is reused, training continues from its newest checkpoint. The outcome is `outcome.json`; the exit
code says how it ended, so a supervisor needs no log parsing.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from finetune import dataset as datasets
from finetune.gguf_lora import convert
from finetune.model import BASE_MODEL_ID, base_revision, hf_base_folder
from finetune.train import NothingToTrain, TrainConfig, TrainingCancelled, train

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# The exit codes (also the `exit` field of outcome.json); a supervisor can import these.
EXIT_OK = 0  # trained and converted: the adapter is ready to evaluate
EXIT_FAILED = 1  # an unexpected error; outcome.json carries it
EXIT_NOTHING = 2  # the dataset has nothing to train on (`NothingToTrain`)
EXIT_DISK = 3  # the disk (or a file-size limit) ran out
EXIT_CANCELLED = 4  # someone asked the job to stop (`TrainingCancelled`); a rerun resumes
DISK_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _progress(job_dir: Path, stage: str, progress: float, **extra: Any) -> None:
    tmp = job_dir / ".progress.json"
    tmp.write_text(json.dumps({"stage": stage, "progress": progress, **extra}))
    tmp.replace(job_dir / "progress.json")


def _outcome(job_dir: Path, code: int, **body: Any) -> int:
    try:
        (job_dir / "outcome.json").write_text(json.dumps({"exit": code, **body}, indent=2, default=str) + "\n")
    except OSError:  # the disk may be the reason we are here; the exit code still says it
        pass
    return code


def make_dataset(export: Path, names: list[str], out: Path, config: datasets.DatasetConfig) -> dict[str, Any]:
    """Dataset step alone (also `deskmate retrain --dry-run`): returns the card."""
    with open(export, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    splits, card = datasets.build(records, config, names)
    datasets.write(splits, card, out)
    return card.to_dict()


def run(
    export: Path,
    names: list[str],
    job_dir: Path,
    *,
    cache_root: Path,
    dataset_config: datasets.DatasetConfig,
    train_config: TrainConfig,
) -> int:
    """All the file steps; returns the exit code (also written to outcome.json)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    stage = "dataset"
    try:
        data_dir = job_dir / "dataset"
        if not (data_dir / "card.json").is_file():
            _progress(job_dir, "dataset", 0.0)
            make_dataset(export, names, data_dir, dataset_config)
        card = json.loads((data_dir / "card.json").read_text())
        stage = "base model"
        _progress(job_dir, "base model", 0.0)
        base = hf_base_folder(cache_root)
        stage = "training"
        result = train(data_dir, base, job_dir / "training", train_config)
        stage = "conversion"
        adapter = job_dir / "training" / "adapter"
        convert(adapter, json.loads((base / "config.json").read_text()), adapter / "adapter.gguf")
        _progress(job_dir, "trained", 1.0)
        return _outcome(
            job_dir,
            EXIT_OK,
            adapter=str(adapter),
            base_model=BASE_MODEL_ID,
            base_revision=base_revision(),
            dataset_card=card,
            training=result,
            train_config=asdict(train_config),
            seconds=round(time.time() - started, 1),
        )
    except NothingToTrain as exc:
        return _outcome(job_dir, EXIT_NOTHING, error=str(exc))
    except TrainingCancelled as exc:
        return _outcome(job_dir, EXIT_CANCELLED, error=str(exc))
    except Exception as exc:
        why = disk_full(exc)
        if why:
            return _outcome(
                job_dir,
                EXIT_DISK,
                error=f"the disk filled up during {stage} ({why}); free space "
                "and retrain: the live adapter is untouched",
            )
        raise


DISK_MESSAGES = re.compile(
    r"No space left on device|File too large|Disk quota exceeded|os error (28|27|122)\b"
    r"|file write failed",
    re.IGNORECASE,
)


def disk_full(exc: BaseException) -> str | None:
    """Why, if this failure was the disk (or a file-size limit) running out. The writers involved
    say so differently: OSError's errno, safetensors' Rust `os error 27`, torch's `file write failed`."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_ERRORS:
            return seen.strerror or errno.errorcode.get(seen.errno or 0, "disk full")
        found = DISK_MESSAGES.search(str(seen))
        if found:
            return found.group(0)
        seen = seen.__cause__ or seen.__context__
    return None


ConfigT = TypeVar("ConfigT", bound="DataclassInstance")


def config_from(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """An instance of the dataclass `cls` from a config mapping (JSON, settings), keeping only
    the keys that are fields of `cls` and leaving the rest at their defaults; unknown keys are
    ignored, so an older or newer config still loads."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True, help="JSONL from `deskmate export ratings`")
    parser.add_argument("--names", type=Path, help="names to scrub, one per line")
    parser.add_argument("--job-dir", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path(".deskmate/cache"), help="where the HF base folder lives")
    parser.add_argument("--config", type=Path, help="JSON: {'dataset': {...}, 'train': {...}}")
    args = parser.parse_args(argv)
    raw = json.loads(args.config.read_text()) if args.config else {}
    names = [n.strip() for n in args.names.read_text(encoding="utf-8").splitlines() if n.strip()] if args.names else []
    try:
        return run(
            args.export,
            names,
            args.job_dir,
            cache_root=args.cache,
            dataset_config=config_from(datasets.DatasetConfig, raw.get("dataset", {})),
            train_config=config_from(TrainConfig, raw.get("train", {})),
        )
    except Exception as exc:  # noqa: BLE001 (the outcome file is how the supervisor learns why)
        import traceback

        traceback.print_exc()
        return _outcome(args.job_dir, EXIT_FAILED, error=f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
