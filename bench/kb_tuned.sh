#!/usr/bin/env bash
# The knowledge-base answerer before and after instruction tuning (bench/results/kb.md, last section).
#
# XQuAD English, articles split 50/50 by title (polymodal.kb.tuning_data.split_articles, seed 0): SmolLM2 is tuned
# (task instruct, LoRA r 8 on q/v, 1 epoch) on 120 conversations from the train articles, each exactly the prompt
# the answerer sends (top 3 hybrid passages, cite [n]) with the gold answer; then `polymodal kb eval` answers the
# same 40 random questions of the held-out test articles (seed 0) with the base model and with the tuned run,
# over the whole 240-paragraph KB. Run from the repository root (about 20 min on 2 cores):
#
#     bash bench/kb_tuned.sh [WORK_DIR]        # default bench/work/kb_tuned (git-ignored)
#
# Data: $POLYMODAL_SHARED_DATA, else ../shared/data.
set -euo pipefail
export D=${1:-bench/work/kb_tuned}
export DATA=${POLYMODAL_SHARED_DATA:-../shared/data}
mkdir -p "$D"
python bench/kb.py --data "$DATA" --instruct-data "$D/conv.jsonl"
python - <<'PY'
import json, os, random

from polymodal.kb import read_squad
from polymodal.kb.tuning_data import split_articles

d, data = os.environ["D"], os.environ["DATA"]
rows = [json.loads(line) for line in open(f"{d}/conv.jsonl")]
train = [r for r in rows if r["split"] == "train"]
test = [r for r in rows if r["split"] == "test"]
random.Random(0).shuffle(train)
random.Random(0).shuffle(test)
small = ([dict(r, split="train") for r in train[:120]] + [dict(r, split="val") for r in train[120:128]]
         + [dict(r, split="test") for r in test[:16]])
open(f"{d}/small.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in small))
squad = f"{data}/qa/xquad.en.json"
_, questions = read_squad(squad)
titles = split_articles(questions, 0.5, seed=0)  # the same test articles as the conversations' split
src = json.load(open(squad))
json.dump(dict(src, data=[a for a in src["data"] if a["title"] in titles]), open(f"{d}/test_articles.json", "w"))
PY
cat > "$D/cfg.yaml" <<Y
task: instruct
data: {manifest: $PWD/$D/small.jsonl, skip_bad: true}
instruct: {lm: smollm2, stage: lora, max_tokens: 1600, max_new_tokens: 24, val_items: 8, lora_r: 8, lora_alpha: 16}
optim: {epochs: 1, batch_size: 2, encoder_lr: 5.0e-4, lr: 1.0e-3, warmup_ratio: 0.1}
out_dir: $PWD/$D/run
Y
polymodal train "$D/cfg.yaml"
polymodal kb build "$DATA/qa/xquad.en.json" --out "$D/kb"
polymodal kb eval "$D/kb" "$D/test_articles.json" --out "$D/eval-tuned" --lm "$D/run" --max-answered 40
polymodal kb eval "$D/kb" "$D/test_articles.json" --out "$D/eval-base" --max-answered 40
