"""TRL baseline of `cargo xtask bench --cases trl`: TRL's own RewardTrainer on the built-in job of
`cargo xtask train` (same model config, tokenizer, rows and settings, exported by the bench).

Usage: python3 xtask/bench/trl_baseline.py DIR → JSON on stdout
DIR holds config.json, tokenizer.json, tokenizer_config.json, train.jsonl, eval.jsonl and
settings.json (the RewardConfig fields the job sets).
Pinned: torch 2.15.0, transformers 5.24.0, trl 0.28.0 (CPU, float32).

Like for like with trl-rs: float32 (`bf16=False`; TRL's default is bf16) and no gradient
checkpointing (TRL 0.28's default is on; it recomputes activations, trading time for memory).
"""
import json
import sys
import time

import torch
import transformers
import trl
from datasets import load_dataset
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerFast
from trl import RewardConfig, RewardTrainer


def main(d):
    s = json.load(open(f"{d}/settings.json"))
    torch.manual_seed(s["seed"])
    tok = PreTrainedTokenizerFast.from_pretrained(d)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(d))
    data = load_dataset("json", data_files={"train": f"{d}/train.jsonl", "eval": f"{d}/eval.jsonl"})
    args = RewardConfig(
        output_dir=f"{d}/trl",
        learning_rate=s["learning_rate"],
        max_steps=s["max_steps"],
        per_device_train_batch_size=s["per_device_train_batch_size"],
        per_device_eval_batch_size=s["per_device_eval_batch_size"],
        logging_steps=s["logging_steps"],
        eval_strategy="steps",
        eval_steps=s["eval_steps"],
        save_steps=s["save_steps"],
        warmup_steps=s["warmup_ratio"],  # transformers 5: a float below 1 is a ratio
        max_length=s["max_length"],
        seed=s["seed"],
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = RewardTrainer(
        model=model, args=args, processing_class=tok, train_dataset=data["train"], eval_dataset=data["eval"]
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    trainer.evaluate()
    # TRL adds its metrics when it logs, so they are in the log history, not evaluate()'s result
    accuracy = next((e["eval_accuracy"] for e in reversed(trainer.state.log_history) if "eval_accuracy" in e), None)
    pairs = s["max_steps"] * s["per_device_train_batch_size"]
    print(json.dumps({
        "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
        "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "train_seconds": wall, "pairs_per_sec": pairs / wall,
        "eval_accuracy": accuracy, "train_rows": len(data["train"]), "eval_rows": len(data["eval"]),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
