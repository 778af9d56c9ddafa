"""PyTorch/transformers baseline for `cargo xtask bench` (run by hand or by the bench when Python is present).

Measures what TRL's RewardTrainer does per step — one forward of chosen ++ rejected through
AutoModelForSequenceClassification, the Bradley–Terry loss, backward, AdamW step — and scoring
(no-grad forward), in pairs per second, for the model configs the Rust bench uses.

Usage: python3 xtask/bench/torch_baseline.py CASES.json  → JSON on stdout
CASES.json: [{"name", "config": {...config.json...}, "batch_pairs", "seq_len", "lengths", "seconds"}]
`lengths`: the real length of each of the 2 * batch_pairs rows (chosen, then rejected); rows are
right-padded to the longest with pad_token_id, as TRL's collator does.
Pinned: torch 2.15.0, transformers 5.24.0 (float32; on the CPU, or on the GPU that
TORCH_DEVICE names, e.g. `cuda:0`, as `cargo xtask bench --device cuda:0` sets it).
"""
import json
import os
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification


DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn, seconds, min_iters=3):
    fn()  # warm-up
    sync()
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        fn()
        n += 1
    sync()
    return n, time.perf_counter() - start


def run(case):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(**case["config"])
    model = AutoModelForSequenceClassification.from_config(cfg)
    model.config.pad_token_id = case["config"].get("pad_token_id", 0)
    b, t = case["batch_pairs"], case["seq_len"]
    lengths = case.get("lengths") or [t] * (2 * b)
    t = max(lengths)
    ids = torch.randint(2, cfg.vocab_size, (2 * b, t))
    mask = torch.ones_like(ids)
    for row, n in enumerate(lengths):
        ids[row, n:] = model.config.pad_token_id
        mask[row, n:] = 0
    model.to(DEVICE)
    ids, mask = ids.to(DEVICE), mask.to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def train_step():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.squeeze(-1)
        rc, rr = torch.chunk(logits, 2)
        loss = -torch.nn.functional.logsigmoid(rc - rr).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    def score_step():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    n, s = timed(train_step, case["seconds"])
    train = n * b / s
    model.eval()
    n, s = timed(score_step, case["seconds"])
    score = n * b / s
    params = sum(p.numel() for p in model.parameters())
    return {"name": case["name"], "train_pairs_per_sec": train, "score_pairs_per_sec": score, "params": params}


if __name__ == "__main__":
    torch.set_num_threads(int(torch.get_num_threads()))
    cases = json.load(open(sys.argv[1]))
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(DEVICE),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "results": [run(c) for c in cases]}
    print(json.dumps(out))
