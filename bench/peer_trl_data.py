"""TRL's dataset preparation, the data peer: read a JSONL chat file and tokenise it with the
SmolLM2 template with {% generation %} markers (assistant masks), as SFTTrainer does before
training. Cold: datasets' cache is off, as tailor's run is made without its cache. One JSON line."""

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from common import SMOL_TRAINING_TEMPLATE

    datasets.disable_caching()
    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.chat_template = SMOL_TRAINING_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    cfg = SFTConfig(output_dir="/tmp/trl-bench-data", max_length=512, assistant_only_loss=True, report_to=[],
                    use_cpu=True, disable_tqdm=True)
    small = datasets.Dataset.from_list([json.loads(line) for line in open(a.data)][:16])
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=small, processing_class=tok)
    t = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=a.data, split="train")
    out = trainer._prepare_dataset(ds, tok, cfg, False, None, "train")
    seconds = time.perf_counter() - t
    n = len(out)
    print(json.dumps({"tool": "trl", "examples": n, "seconds": seconds, "examples_per_s": n / seconds,
                      "tokens": int(sum(len(x) for x in out["input_ids"]))}))


if __name__ == "__main__":
    main()
