"""`python -m finetune.pipeline` as the bot (or a GPU batch job) runs it: a child process that
reads an export and writes an adapter, and survives being killed, a full disk and bad data."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from finetune import pipeline as finetune_pipeline
from finetune.model import hf_base_folder
from tests.support.pipeline import pipeline_command

SYSTEM = "You are Deskmate, a helpful company support assistant. Answer briefly and only from the context."


def door_record(i: int, **rating: Any) -> dict[str, Any]:
    """An exported rated turn about a door code; the lead's correction says it in house style."""
    question = f"What is the door code for room {i}?"
    return {
        "export_version": 1,
        "turn_id": f"t{i:03d}",
        "created_at": f"2026-11-{1 + i % 20:02d}T10:{i % 60:02d}:00+00:00",
        "status": "answered",
        "question": question,
        "answer": f"Room {i} has a door.",
        "prompt": [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": f"Context:\n[1] Doors: Room {i} opens with code {1000 + 7 * i}.\n\nQuestion: {question}",
            },
        ],
        "retrieved": [{"doc_id": "doors", "groups": ["everyone"], "text": f"Room {i} opens with code {1000 + 7 * i}."}],
        "correction": None,
        "score": None,
        "verdict": None,
        "thumbs_up": 0,
        "thumbs_down": 0,
        **rating,
    }


def corrected(i: int) -> dict[str, Any]:
    return door_record(i, correction=f"Room {i} opens with the code {1000 + 7 * i}. ZEBRA desk.", score=2)


def write_export(folder: Path, records: list[dict[str, Any]], train: dict[str, Any]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    export = folder / "export.jsonl"
    export.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = folder / "config.json"
    config.write_text(
        json.dumps(
            {
                "dataset": {"eval_share": 0.0, "distractor_share": 0.0, "kto_min_each": 4},
                "train": {"batch_size": 4, "max_length": 256, "learning_rate": 2e-3, **train},
            }
        )
    )
    return export, config


def pipeline(export: Path, config: Path, job: Path, cache: Path, **popen: Any) -> subprocess.Popen:
    return subprocess.Popen(
        pipeline_command(export, job, cache, config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **popen,
    )


def outcome(job: Path) -> dict[str, Any]:
    return json.loads((job / "outcome.json").read_text())


@pytest.mark.slow
def test_a_killed_job_resumes_from_its_checkpoint_and_the_gguf_answers_like_peft(
    tmp_path: Path, model_cache: Path
) -> None:
    export, config = write_export(tmp_path, [corrected(i) for i in range(12)], {"max_steps": 6, "save_steps": 2})
    job = tmp_path / "job"
    first = pipeline(export, config, job, model_cache)
    checkpoints = job / "training" / "sft"
    deadline = time.time() + 300
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (job / "outcome.json").exists()

    second = pipeline(export, config, job, model_cache)
    assert second.wait(timeout=600) == 0, second.stderr.read().decode()[-2000:]
    done = outcome(job)
    assert done["training"]["sft"]["resumed_from"].startswith("checkpoint-")
    assert done["training"]["sft"]["steps"] == 6
    assert done["training"]["sft"]["last_loss"] < done["training"]["sft"]["first_loss"]
    assert done["dataset_card"]["train"] == {"sft_correction": 12}

    # The GGUF LoRA on llama.cpp answers as transformers + peft do with the PEFT files.
    adapter = Path(done["adapter"])
    question = [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": "Context:\n[1] Doors: Room 77 opens with code 4242.\n\n"
            "Question: What is the door code for room 77?",
        },
    ]
    from llama_cpp import Llama
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.model import base_gguf_path

    llm = Llama(model_path=str(base_gguf_path()), lora_path=str(adapter / "adapter.gguf"), n_ctx=512, verbose=False)
    served = llm.create_chat_completion(messages=question, max_tokens=24, temperature=0)["choices"][0]["message"][
        "content"
    ]
    base = hf_base_folder(model_cache)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter)).eval()
    ids = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    reference = tokenizer.decode(
        model.generate(ids, max_new_tokens=24, do_sample=False)[0][ids.shape[1] :], skip_special_tokens=True
    )
    assert "ZEBRA" in reference  # it learned the house style...
    assert served.split()[:6] == reference.split()[:6]  # ...and llama.cpp serves the same adapter


@pytest.mark.slow
def test_a_full_disk_stops_the_job_with_a_clear_message(tmp_path: Path, model_cache: Path) -> None:
    export, config = write_export(tmp_path, [corrected(i) for i in range(8)], {"max_steps": 4, "save_steps": 1})
    job = tmp_path / "job"

    def small_disk() -> None:  # files over 2 MB fail with EFBIG, as writes to a full disk fail
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, 2 * 1024 * 1024))

    run = pipeline(export, config, job, model_cache, preexec_fn=small_disk)
    assert run.wait(timeout=600) == 3, run.stderr.read().decode()[-3000:]
    assert "disk filled up" in outcome(job)["error"]
    assert not (job / "training" / "adapter").exists()


@pytest.mark.slow
def test_only_thumbs_down_is_nothing_to_learn(tmp_path: Path, model_cache: Path) -> None:
    export, config = write_export(tmp_path, [door_record(i, thumbs_down=1) for i in range(6)], {})
    # in this process: the exit code and the outcome file are what the child would leave
    args = pipeline_command(export, tmp_path / "job", model_cache, config)[3:]
    assert finetune_pipeline.main(args) == finetune_pipeline.EXIT_NOTHING
    assert "no approved or corrected answer to learn from" in outcome(tmp_path / "job")["error"]


@pytest.mark.slow
def test_thumbs_train_kto_after_sft_when_there_are_enough_of_both(tmp_path: Path, model_cache: Path) -> None:
    records = [corrected(i) for i in range(4)]
    records += [door_record(i, thumbs_up=1) for i in range(10, 14)]
    records += [door_record(i, thumbs_down=1) for i in range(20, 24)]
    export, config = write_export(tmp_path, records, {"max_steps": 2, "save_steps": 10})
    run = pipeline(export, config, tmp_path / "job", model_cache)
    assert run.wait(timeout=600) == 0, run.stderr.read().decode()[-3000:]
    done = outcome(tmp_path / "job")
    assert done["training"]["kto"]["steps"] == 2 and done["training"]["kto_examples"] == 8
    assert "4 desirable and 4 undesirable" in done["dataset_card"]["kto"]


@pytest.mark.slow
def test_a_cancelled_job_stops_at_the_next_step_and_keeps_its_checkpoint(tmp_path: Path, model_cache: Path) -> None:
    export, config = write_export(tmp_path, [corrected(i) for i in range(8)], {"max_steps": 200, "save_steps": 1})
    job = tmp_path / "job"
    run = pipeline(export, config, job, model_cache)
    deadline = time.time() + 300
    while not (job / "training" / "progress.json").exists():
        assert run.poll() is None and time.time() < deadline
        time.sleep(0.5)
    (job / "training" / "CANCEL").touch()
    assert run.wait(timeout=300) == 4
    assert "cancelled at step" in outcome(job)["error"]
    assert list((job / "training" / "sft").glob("checkpoint-*/trainer_state.json"))
