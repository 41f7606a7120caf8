"""The span extractor's answer-type prior (``SpanExtractor.type_weight``), chosen on XQuAD's dev articles, then
measured once on the held-out test articles (the 60 questions of bench/kb_xquad.py).

Same set-up as bench/kb_xquad.py: a KB of all 240 XQuAD English paragraphs (bundled MiniLM), the top 3 hybrid
passages, SmolLM2 scoring the candidate spans. SmolLM2 scores each question's candidates once (memoised); every
weight re-ranks the same scores, so the grid costs one pass. The weight with the best dev F1 is the default; the
test questions are answered with 0 (the previous behaviour) and with it.

    python bench/kb_answer_type.py [--n-dev 100] [--n-test 60]      # about 10 min; bench/results/kb_answer_type.md
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _harness import RESULTS, log, shared_data

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
K_PASSAGES = 3


def evaluate(extractor, questions, retrievals, kbmod) -> dict:
    em = f1 = 0.0
    typed = {"number": [0, 0.0], "person": [0, 0.0], None: [0, 0.0]}
    from polymodal.kb.extract import answer_type

    for q, r in zip(questions, retrievals):
        result = kbmod.answer_from(r, extractor, K_PASSAGES, float("-inf"))
        text = kbmod.strip_citations(result.text) if result.found else ""
        e, f = kbmod.exact_match(text, q.answers), kbmod.f1_score(text, q.answers)
        em, f1 = em + e, f1 + f
        t = typed[answer_type(q.question)]
        t[0], t[1] = t[0] + 1, t[1] + f
    n = len(questions)
    return {"em": em / n, "f1": f1 / n, "by_type": {str(k): (v[0], v[1] / v[0] if v[0] else float("nan"))
                                                   for k, v in typed.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", dest="data_arg")
    p.add_argument("--n-dev", type=int, default=100)
    p.add_argument("--n-test", type=int, default=60)
    args = p.parse_args()
    data = shared_data(args.data_arg, "qa/xquad.en.json")
    import torch

    torch.set_num_threads(1)
    import polymodal.kb as kbmod
    from polymodal.kb.lm import load_answer_lm
    from polymodal.kb.tuning_data import split_articles

    started, load = time.perf_counter(), [os.getloadavg()[0]]
    work = Path(tempfile.mkdtemp(prefix="polymodal-bench-kbtype-"))
    squad = data / "qa" / "xquad.en.json"
    _, questions = kbmod.read_squad(squad)
    test_titles = split_articles(questions, 0.5, seed=0)
    kbmod.build_kb([squad], work / "kb", progress=False)
    kb = kbmod.KnowledgeBase(work / "kb")
    test_qs = [q for q in questions if q.paragraph.title in test_titles and q.answers]
    dev_qs = [q for q in questions if q.paragraph.title not in test_titles and q.answers]
    test = random.Random(0).sample(test_qs, min(args.n_test, len(test_qs)))  # bench/kb_xquad.py's sample
    dev = random.Random(1).sample(dev_qs, min(args.n_dev, len(dev_qs)))
    model, tokenizer = load_answer_lm("smollm2")
    extractor = kbmod.SpanExtractor(kb, model, tokenizer)
    memo: dict = {}
    score = extractor.span_log_probs

    def memoised(context, question, spans):
        key = (context, question, tuple(spans))
        if key not in memo:
            memo[key] = score(context, question, spans)
        return memo[key]

    extractor.span_log_probs = memoised
    rows = {}
    for name, qs in (("dev", dev), ("test", test)):
        retrievals = kb.retrieve_many([q.question for q in qs], k=K_PASSAGES)
        grid = WEIGHTS if name == "dev" else (0.0, rows["chosen"])
        for w in grid:
            extractor.type_weight = w
            rows[(name, w)] = evaluate(extractor, qs, retrievals, kbmod)
            log(f"{name} type_weight {w}: EM {rows[(name, w)]['em']:.3f} F1 {rows[(name, w)]['f1']:.3f}")
        if name == "dev":
            rows["chosen"] = max(WEIGHTS, key=lambda w: (rows[("dev", w)]["f1"], -w))
    kb.close()
    load.append(os.getloadavg()[0])
    chosen = rows["chosen"]
    L = ["# Answer-type prior of the span extractor (XQuAD English)", "",
         f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; `python bench/kb_answer_type.py`; torch "
         f"1 thread; {(time.perf_counter() - started) / 60:.1f} min; 1-minute load {load[0]:.2f} at the start, "
         f"{load[1]:.2f} at the end (2 cores, shared).",
         f"- Dev: {len(dev)} questions of the dev articles (seed 1); test: the {len(test)} held-out questions of "
         "bench/kb_xquad.py (seed 0). KB of all 240 paragraphs, top 3 hybrid passages, SmolLM2 span scoring, refusal "
         "off. The weight was chosen on dev only; test was run once, with 0 and the chosen weight.", "",
         "| split | type_weight | EM | F1 | F1 on number questions (n) | F1 on person questions (n) | F1 on the others (n) |",
         "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (name, w), r in ((k, v) for k, v in rows.items() if isinstance(k, tuple)):
        bt = r["by_type"]
        cells = " | ".join(f"{100 * bt[t][1]:.1f} ({bt[t][0]})" for t in ("number", "person", "None"))
        mark = " (chosen)" if w == chosen and name == "dev" else ""
        L.append(f"| {name} | {w:g}{mark} | {100 * r['em']:.1f} | {100 * r['f1']:.1f} | {cells} |")
    before, after = rows[("test", 0.0)], rows[("test", chosen)]
    L += ["", f"Held-out test F1 {100 * before['f1']:.1f} -> {100 * after['f1']:.1f} "
              f"({100 * (after['f1'] - before['f1']):+.1f} points), EM {100 * before['em']:.1f} -> {100 * after['em']:.1f}, "
              f"with type_weight {chosen:g} (one row is {100 / len(test):.1f} points)."]
    out = RESULTS / "kb_answer_type.md"
    out.write_text("\n".join(L) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
