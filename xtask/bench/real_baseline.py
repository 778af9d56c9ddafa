"""transformers side of `cargo xtask bench --cases real`: load a reward model and score pairs.

Usage: python3 xtask/bench/real_baseline.py MODEL_DIR PAIRS.jsonl BATCH_PAIRS
Prints `bench: load_s X` and `bench: peak_rss_kb Y` on stderr (the bench measures the wall time
of the whole process itself). Loads in float32, as transformers runs on a CPU by default; on the
GPU that TORCH_DEVICE names (`cuda:0`), as `cargo xtask bench --device cuda:0` sets it.
Pinned: torch 2.15.0, transformers 5.24.0.
"""
import json
import os
import resource
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast


def main(model_dir, pairs_file, batch_pairs):
    start = time.perf_counter()
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    device = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.eval()
    print(f"bench: load_s {time.perf_counter() - start}", file=sys.stderr)
    rows = [json.loads(line) for line in open(pairs_file) if line.strip()]
    eos = tok.eos_token or ""
    texts = [[r["prompt"] + r[side] + eos for side in ("chosen", "rejected")] for r in rows]
    with torch.no_grad():
        for i in range(0, len(texts), batch_pairs):
            chunk = [t for pair in texts[i:i + batch_pairs] for t in pair]
            enc = tok(chunk, padding=True, return_tensors="pt", add_special_tokens=False).to(device)
            model(**enc).logits.float().tolist()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"bench: peak_rss_kb {peak}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
