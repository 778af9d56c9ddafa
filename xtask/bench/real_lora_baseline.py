"""PEFT + TRL side of `cargo xtask bench --cases real`: LoRA (or full) reward training on the 0.5B model.

Usage: python3 xtask/bench/real_lora_baseline.py MODEL_DIR TRAIN.jsonl OUT_DIR MAX_STEPS BATCH_PAIRS [lora|full]
TRL 0.28's RewardTrainer with a PEFT LoraConfig (r 16, alpha 32, dropout 0.05, SEQ_CLS, PEFT's
default targets q_proj/v_proj), as `cargo xtask train --lora-r 16` trains it: float32 weights
(`bf16=False`) and no gradient checkpointing (TRL's default turns it on; the bench runs trl-rs with
`--gradient-checkpointing false` to match, and its `--bf16` row against this f32 one).
Prints `bench: step_s S` (the median time between consecutive optimizer steps, from a callback at
each step's end, as trl-rs reports its own) and `bench: peak_rss_kb Y` on stderr.
Pinned: torch 2.15.0, transformers 5.24.0, trl 0.28.0, peft 0.21.2.
"""
import resource
import statistics
import sys
import time

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast, TrainerCallback
from trl import RewardConfig, RewardTrainer


class StepEnds(TrainerCallback):
    """The instant each optimizer step ends."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main(model_dir, train_file, out_dir, max_steps, batch_pairs, mode="lora"):
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    args = RewardConfig(
        output_dir=out_dir, max_steps=max_steps, per_device_train_batch_size=batch_pairs, learning_rate=1e-4,
        logging_steps=1, save_strategy="no", eval_strategy="no", max_length=64, bf16=False,
        gradient_checkpointing=False, use_cpu=True, report_to=[], disable_tqdm=True, dataloader_num_workers=0,
    )
    # "full": every weight trained with AdamW in f32, as `cargo xtask train` without --lora-*
    peft_config = LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, lora_dropout=0.05) if mode == "lora" else None
    data = load_dataset("json", data_files={"train": train_file})["train"]
    ends = StepEnds()
    trainer = RewardTrainer(model=model, args=args, processing_class=tok, train_dataset=data, peft_config=peft_config)
    trainer.add_callback(ends)
    trainer.train()
    gaps = [b - a for a, b in zip(ends.ends, ends.ends[1:])]
    if gaps:
        print(f"bench: step_s {statistics.median(gaps)}", file=sys.stderr)
    print(f"bench: peak_rss_kb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), *sys.argv[6:7])
