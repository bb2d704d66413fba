"""LoRA training: SFT on approved and corrected answers, then KTO on thumbs when the dataset has
enough of both. peft makes the adapter, TRL's trainers train it; on a GPU node the same code runs
under `accelerate launch`.

Deterministic (one seed for data order, dropout and LoRA init), resumable (a checkpoint every
`save_steps`; a rerun into the same folder continues from the newest one), cancellable (a file
named `CANCEL` in the output folder stops it at the next step, leaving the last checkpoint) and
observable (`progress.json`, rewritten every step, plus TRL's progress bar on the terminal).

Gradient checkpointing is off: TRL turns it on by default, and on CPU it makes a step ~4.5x
slower for memory we do not need at this model size.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainingCancelled(Exception):
    """Someone asked the job to stop; the newest checkpoint is kept for a resume."""


class NothingToTrain(ValueError):
    """The dataset has no example the trainers can learn from; the message says why."""


@dataclass
class TrainConfig:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # The defaults are the settings bench/finetune_effect.py measured: batch 1 x 4 accumulated
    # keeps training under 4.4 GB on ~500-token prompts (batch 4 took 12.4 GB), and one thread
    # leaves the other core to the bot answering next to it.
    learning_rate: float = 1e-3
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 1
    grad_accum: int = 4
    max_length: int = 768
    save_steps: int = 10
    seed: int = 13
    kto_epochs: float = 1.0
    kto_beta: float = 0.1
    threads: int = 1  # 0: torch's default (every core)


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _prompt_completion(example: dict[str, Any]) -> dict[str, Any]:
    """The served prompt as the prompt, the target as the completion: the loss falls on the
    answer only (SmolLM2's chat template has no markers for TRL's assistant-only loss)."""
    messages = example["messages"]
    row: dict[str, Any] = {"prompt": messages[:-1], "completion": [messages[-1]]}
    if example.get("label") is not None:
        row["label"] = bool(example["label"])
    return row


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete `checkpoint-N` under `folder`, if any."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.rsplit("-", 1)[-1]), default=None)


class _Progress:
    """Builds the trainer callback that writes progress.json and honours CANCEL."""

    def __init__(self, out: Path, stage: str, share: tuple[float, float]) -> None:
        self.out, self.stage, self.share = out, stage, share
        self.started = time.time()

    def callback(self) -> TrainerCallback:
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_step_end(
                self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
            ) -> TrainerControl:
                outer.write(state.global_step, state.max_steps, state.log_history)
                if (outer.out / "CANCEL").exists():
                    control.should_save = True
                    control.should_training_stop = True
                return control

        return Callback()

    def write(self, step: int, total: int, history: list[dict[str, Any]]) -> None:
        low, high = self.share
        loss = next((h["loss"] for h in reversed(history) if "loss" in h), None)
        body = {
            "stage": self.stage,
            "step": step,
            "steps": total,
            "progress": round(low + (high - low) * step / max(1, total), 4),
            "loss": loss,
            "elapsed_s": round(time.time() - self.started, 1),
            "pid": os.getpid(),
        }
        tmp = self.out / ".progress.json"
        tmp.write_text(json.dumps(body))
        tmp.replace(self.out / "progress.json")


def _seed_everything(seed: int, threads: int) -> None:
    import torch
    from transformers import set_seed

    set_seed(seed, deterministic=False)
    if threads:
        torch.set_num_threads(threads)


def train(dataset_dir: Path, base_dir: Path, out_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """Train the adapter into `out_dir/adapter` and return what happened (steps, losses,
    seconds). `base_dir` is the base model as a Hugging Face folder (`model.hf_base_folder`)."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    sft_rows = [_prompt_completion(e) for e in _read(dataset_dir / "train.jsonl")]
    kto_rows = [_prompt_completion(e) for e in _read(dataset_dir / "kto_train.jsonl")]
    if not sft_rows:
        raise NothingToTrain(
            "no approved or corrected answer to learn from: SFT needs answers a lead scored 4+, "
            "marked correct or corrected (thumbs alone only train KTO, on top of SFT)"
        )
    _seed_everything(config.seed, config.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    started = time.time()
    report: dict[str, Any] = {"sft_examples": len(sft_rows), "kto_examples": len(kto_rows)}
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.targets,
        task_type="CAUSAL_LM",
    )
    kto_share = 0.3 if kto_rows else 0.0

    sft_dir = out_dir / "sft"
    sft_done = sft_dir / "final"
    if not (sft_done / "adapter_config.json").is_file():
        report["sft"] = _run_sft(
            sft_rows, base_dir, tokenizer, lora, config, sft_dir, _Progress(out_dir, "sft", (0.0, 1.0 - kto_share))
        )
    adapter_source = sft_done
    if kto_rows:
        kto_dir = out_dir / "kto"
        if not (kto_dir / "final" / "adapter_config.json").is_file():
            base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
            model = PeftModel.from_pretrained(base, str(sft_done), is_trainable=True)
            report["kto"] = _run_kto(
                kto_rows, model, tokenizer, config, kto_dir, _Progress(out_dir, "kto", (1.0 - kto_share, 1.0))
            )
        adapter_source = kto_dir / "final"
    final = out_dir / "adapter"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(adapter_source, final)
    _point_at_base(final, base_dir)
    report["seconds"] = round(time.time() - started, 1)
    return report


def _point_at_base(adapter: Path, base_dir: Path) -> None:
    """peft records the folder it loaded the base from; make that the converted HF folder."""
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = str(base_dir)
    path.write_text(json.dumps(config, indent=2) + "\n")


def _common_args(config: TrainConfig, folder: Path, epochs: float) -> dict[str, Any]:
    return {
        "output_dir": str(folder),
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.learning_rate,
        "num_train_epochs": epochs,
        "max_steps": config.max_steps,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 2,
        "seed": config.seed,
        "data_seed": config.seed,
        "gradient_checkpointing": False,
        "report_to": "none",
        "use_cpu": not _has_gpu(),
        "bf16": False,
        "fp16": False,
        "dataloader_num_workers": 0,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "disable_tqdm": False,
    }


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _finish(trainer: Any, folder: Path, resume: Path | None) -> dict[str, Any]:
    state = trainer.state
    if (folder.parent / "CANCEL").exists():
        raise TrainingCancelled(
            f"cancelled at step {state.global_step} of {state.max_steps}; the newest checkpoint is kept in {folder}"
        )
    trainer.save_model(str(folder / "final"))
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    return {
        "steps": state.global_step,
        "resumed_from": resume.name if resume else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


def _run_sft(
    rows: list[dict[str, Any]],
    base_dir: Path,
    tokenizer: Any,
    lora: Any,
    config: TrainConfig,
    folder: Path,
    progress: _Progress,
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # trl re-exports lazily, not explicitly

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    args = SFTConfig(
        **_common_args(config, folder, config.epochs),
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[progress.callback()],
    )
    resume = last_checkpoint(folder)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return _finish(trainer, folder, resume)


def _run_kto(
    rows: list[dict[str, Any]], model: Any, tokenizer: Any, config: TrainConfig, folder: Path, progress: _Progress
) -> dict[str, Any]:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer  # type: ignore[attr-defined]  # trl re-exports lazily, not explicitly

    good = sum(1 for r in rows if r["label"])
    bad = len(rows) - good
    # TRL advises a weighted desirable:undesirable ratio between 1:1 and 4:3.
    args = KTOConfig(
        **{**_common_args(config, folder, config.kto_epochs), "learning_rate": config.learning_rate / 4},
        beta=config.kto_beta,
        max_length=config.max_length,
        desirable_weight=1.0,
        undesirable_weight=max(1.0, good / max(1, bad)),
    )
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[progress.callback()],
    )
    resume = last_checkpoint(folder)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return _finish(trainer, folder, resume)
