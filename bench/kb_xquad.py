"""Knowledge-base answers and refusal on XQuAD English, on held-out articles, before and after issue 19.

Articles are split in two by ``polymodal.kb.tuning_data.split_articles(questions, 0.5, seed=0)``: the *test*
articles (the same held-out half as bench/kb_tuned.sh) and the *dev* articles, the only ones any method or weight
was chosen on.

1. Answers: the KB is all 240 paragraphs (as in bench/kb.py); every answerer answers the same random ``--n``
   questions of the test articles (seed 0) from the top 3 hybrid passages; SQuAD EM/F1, refusals count as wrong
   (the refusal check is off here: it is measured in part 2).
2. Refusal: a KB of half of the test articles (seed 0); questions on those articles should be answered, questions
   on the other test articles refused. The old rule (best cosine under 0.35) against ``refusal.RefusalModel``,
   whose weights are fitted here the same way on the dev articles (``--fit`` prints them for DEFAULT_WEIGHTS).

    PYTHONPATH=<checkout>/src python bench/kb_xquad.py --label before|after     # bench/results/kb_xquad-LABEL.json
    python bench/kb_xquad.py --render                                          # bench/results/kb_xquad.md

Torch runs on 1 thread; with --n 60 about 8 min on 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
K_PASSAGES = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def subset_squad(squad: Path, titles: set[str], out: Path) -> Path:
    raw = json.loads(squad.read_text())
    raw["data"] = [a for a in raw["data"] if a["title"] in titles]
    out.write_text(json.dumps(raw))
    return out


def score(name, answerer, questions, retrievals, kbmod) -> dict:
    rows = []
    start = time.perf_counter()
    for q, r in zip(questions, retrievals):
        result = kbmod.answer_from(r, answerer, K_PASSAGES, float("-inf"))
        text = kbmod.strip_citations(result.text) if result.found else ""
        rows.append({"question": q.question, "gold": list(q.answers), "answer": result.text,
                     "em": kbmod.exact_match(text, q.answers), "f1": kbmod.f1_score(text, q.answers)})
    out = {"answerer": name, "questions": len(rows), "em": sum(r["em"] for r in rows) / len(rows),
           "f1": sum(r["f1"] for r in rows) / len(rows),
           "seconds_per_question": (time.perf_counter() - start) / len(rows),
           "examples": rows[:10]}
    log(f"{name}: EM {out['em']:.3f} F1 {out['f1']:.3f} ({out['seconds_per_question']:.2f} s/question)")
    return out


def refusal_metrics(refused: list[bool], answerable: list[bool]) -> dict:
    tp = sum(r and not a for r, a in zip(refused, answerable))
    n_ref, n_un = sum(refused), sum(not a for a in answerable)
    recall = tp / n_un if n_un else float("nan")
    answerable_refused = sum(r and a for r, a in zip(refused, answerable)) / max(sum(answerable), 1)
    return {"precision": tp / n_ref if n_ref else float("nan"), "recall": recall,
            "answerable_refused": answerable_refused, "balanced_accuracy": (recall + 1 - answerable_refused) / 2}


def refusal_half(kbmod, squad, questions, titles, work, name, weights=None):
    """(features, answerable) for a KB holding a random half of ``titles``; and the metrics of both rules."""
    inside = set(random.Random(0).sample(sorted(titles), len(titles) // 2))
    kb_dir = work / f"kb-{name}"
    kbmod.build_kb([subset_squad(squad, inside, work / f"{name}.json")], kb_dir, progress=False)
    kb = kbmod.KnowledgeBase(kb_dir)
    qs = [q for q in questions if q.paragraph.title in titles]
    answerable = [q.paragraph.title in inside for q in qs]
    retrievals = kb.retrieve_many([q.question for q in qs], k=K_PASSAGES)
    out = {"kb_articles": len(inside), "questions": len(qs), "answerable": sum(answerable)}
    out["cosine_0.35"] = refusal_metrics([r.best_dense < 0.35 for r in retrievals], answerable)
    features = None
    try:
        from polymodal.kb.refusal import RefusalModel
    except ImportError:
        RefusalModel = None
    if RefusalModel is not None:
        model = RefusalModel(kb, **({"weights": weights} if weights else {}))
        features = [model.features(r) for r in retrievals]
        out["refusal_model"] = refusal_metrics([model.weights.score(f) < 0 for f in features], answerable)
    kb.close()
    return out, features, answerable


def run(args) -> None:
    import torch

    torch.set_num_threads(1)
    import polymodal
    import polymodal.kb as kbmod
    from polymodal.kb.lm import load_answer_lm
    from polymodal.kb.tuning_data import split_articles

    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    squad = args.data / "qa" / "xquad.en.json"
    work = Path(tempfile.mkdtemp(prefix="polymodal-bench-kbxq-"))
    _, questions = kbmod.read_squad(squad)
    test_titles = split_articles(questions, 0.5, seed=0)
    dev_titles = {q.paragraph.title for q in questions} - test_titles
    results = {"label": args.label, "polymodal": str(Path(polymodal.__file__).parent), "n": args.n}

    # 2. refusal first (no language model needed)
    if hasattr(kbmod, "SpanExtractor"):
        from polymodal.kb.refusal import fit_weights

        dev, dev_features, dev_answerable = refusal_half(kbmod, squad, questions, dev_titles, work, "dev")
        weights = fit_weights(dev_features, dev_answerable)
        results["refusal_weights"] = weights.__dict__
        log(f"fitted on dev: {weights}")
        results["refusal_dev"] = dev
        results["refusal_test"], _, _ = refusal_half(kbmod, squad, questions, test_titles, work, "test", weights)
    else:
        results["refusal_test"], _, _ = refusal_half(kbmod, squad, questions, test_titles, work, "test")
    log(f"refusal on test articles: {json.dumps(results['refusal_test'])}")

    # 1. answers
    kb_dir = work / "kb-all"
    kbmod.build_kb([squad], kb_dir, progress=False)
    kb = kbmod.KnowledgeBase(kb_dir)
    test_qs = [q for q in questions if q.paragraph.title in test_titles and q.answers]
    sample = random.Random(0).sample(test_qs, min(args.n, len(test_qs)))
    retrievals = kb.retrieve_many([q.question for q in sample], k=K_PASSAGES)
    results["answers"] = {"sentence selector": score("sentence selector", kbmod.SentenceSelector(kb), sample,
                                                     retrievals, kbmod)}
    model, tokenizer = load_answer_lm("smollm2")
    if hasattr(kbmod, "SpanExtractor"):
        results["answers"]["span extractor, heuristic span (no LM)"] = score(
            "span extractor, heuristic", kbmod.SpanExtractor(kb), sample, retrievals, kbmod)
        results["answers"]["span extractor, SmolLM2 span scoring"] = score(
            "span extractor, SmolLM2", kbmod.SpanExtractor(kb, model, tokenizer), sample, retrievals, kbmod)
    generator = kbmod.GenerativeAnswerer(model, tokenizer, max_new_tokens=24)
    results["answers"]["SmolLM2 generative"] = score("SmolLM2 generative", generator, sample, retrievals, kbmod)
    if hasattr(kbmod, "GroundedAnswerer"):
        grounded = kbmod.GroundedAnswerer(generator, kbmod.SpanExtractor(kb, model, tokenizer))
        results["answers"]["SmolLM2 generative, grounded"] = score("SmolLM2 generative, grounded", grounded, sample,
                                                                    retrievals, kbmod)
    kb.close()
    load.append(os.getloadavg()[0])
    results.update(total_s=time.perf_counter() - started, load=load,
                   date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"kb_xquad-{args.label}.json"
    out.write_text(json.dumps(results, indent=2, default=float))
    log(f"wrote {out} in {results['total_s'] / 60:.1f} min")


def pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def render() -> None:
    runs = {label: json.loads((RESULTS / f"kb_xquad-{label}.json").read_text())
            for label in ("before", "after") if (RESULTS / f"kb_xquad-{label}.json").exists()}
    n = next(iter(runs.values()))["n"]
    lines = ["# Knowledge-base answers and refusal on XQuAD English held-out articles", "",
             "- Command: `PYTHONPATH=<checkout>/src python bench/kb_xquad.py --label before|after`, then `--render`; "
             "before = main at 6f6e9c4, after = this branch, same machine and day, torch 1 thread.",
             "- Split: `split_articles(questions, 0.5, seed=0)`: 24 test articles (held out, as in bench/kb_tuned.sh) "
             "and 24 dev articles; the span method, its settings and the refusal weights were chosen on dev only.",
             f"- Answers: KB of all 240 paragraphs; {n} random test-article questions (seed 0), top 3 hybrid passages; "
             "refusal off (measured below).", "",
             "| run | answerer | EM | F1 | s per question |", "| --- | --- | ---: | ---: | ---: |"]
    for label, r in runs.items():
        for name, a in r["answers"].items():
            lines.append(f"| {label} | {name} | {pct(a['em'])} | {pct(a['f1'])} | {a['seconds_per_question']:.2f} |")
    lines += ["", "## Refusal on held-out articles", "",
              "KB of a random half of the test articles; their questions should be answered, the other test "
              "articles' questions refused.", "",
              "| run | rule | refusal precision | refusal recall | answerable refused | balanced accuracy |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for label, r in runs.items():
        t = r["refusal_test"]
        for rule in ("cosine_0.35", "refusal_model"):
            if rule in t:
                m = t[rule]
                name = "best cosine < 0.35 (old)" if rule == "cosine_0.35" else "RefusalModel (fitted on dev)"
                lines.append(f"| {label} | {name} | {pct(m['precision'])} | {pct(m['recall'])} | "
                             f"{pct(m['answerable_refused'])} | {pct(m['balanced_accuracy'])} |")
    after = runs.get("after")
    if after and "refusal_weights" in after:
        lines += ["", f"Weights fitted on dev: `{after['refusal_weights']}`; dev balanced accuracy "
                  f"{pct(after['refusal_dev']['refusal_model']['balanced_accuracy'])}%."]
    lines += ["", "Examples (after):", "", "| question | gold | answerer | answer |", "| --- | --- | --- | --- |"]
    if after:
        for name, a in after["answers"].items():
            for row in a["examples"][:3]:
                answer = " ".join(row["answer"].replace("|", "/").split())[:100]
                lines.append(f"| {row['question']} | {row['gold'][0]} | {name} | {answer} |")
    (RESULTS / "kb_xquad.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'kb_xquad.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("POLYMODAL_SHARED_DATA",
                                                                         ROOT.parent / "shared" / "data")))
    parser.add_argument("--label", default="after")
    parser.add_argument("--n", type=int, default=60, help="test-article questions every answerer answers")
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    render() if args.render else run(args)


if __name__ == "__main__":
    main()
