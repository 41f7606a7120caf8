"""Knowledge-base QA on real documents: the Python tutorial as Debian's python3-doc ships it (HTML) plus one PDF.

The corpus is re-created from packages, nothing is stored in the repository but the questions:

- HTML: the 17 pages of ``/usr/share/doc/python3.X/html/tutorial/`` (``apt-get install python3-doc``), as generated
  by Sphinx, navigation bars, "previous/next" links and the search box included;
- PDF: ``sorting.pdf``, written by this script with fpdf2 from the packaged source of the Sorting HOW TO
  (``.../html/_sources/howto/sorting.rst.txt``, reST roles flattened, code blocks kept), 3-4 pages.

``bench/kb_docs/questions.jsonl``: 50 questions written from the pages, with short answers copied from them
(44 on the tutorial, 6 on the PDF) and 10 in-domain questions the documents cannot answer (``answers: []``). They
are test questions only: no method or threshold was chosen on them (choices were made on XQuAD's dev split,
bench/kb.py).

Metrics: Recall@5 (a top-5 hybrid chunk comes from the gold file and holds a gold answer, normalised); per
answerer, end-to-end normalised exact match and F1 over the 50 answerable questions (a refusal scores 0), and
refusal precision/recall over all 60 (refused = "not in the knowledge base").

Runs against whatever ``polymodal`` is on PYTHONPATH, so the same script measures an older checkout ("before")
and this one ("after"); answerers the checkout lacks are skipped. One torch thread; about 6 min on 2 busy cores.

    python bench/kb_docs.py --label after            # writes bench/results/kb_docs-after.json
    python bench/kb_docs.py --render                 # bench/results/kb_docs.md from the before/after JSON files
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "bench" / "kb_docs" / "questions.jsonl"
RESULTS = ROOT / "bench" / "results"
K_PASSAGES = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def find_python_doc() -> Path:
    """The html folder of the newest python3.X-doc installed."""
    hits = sorted(glob.glob("/usr/share/doc/python3*/html/tutorial/index.html"))
    if not hits:
        raise SystemExit("python3-doc is not installed: run `apt-get install python3-doc` (as root) first")
    return Path(hits[-1]).parents[1]


def rst_to_text(rst: str) -> str:
    """reST source as plain text for the PDF: roles flattened (":func:`sorted`" -> "sorted"), directives dropped."""
    text = re.sub(r":[a-z]+:`~?([^`<]+?)(?:\s*<[^>]+>)?`", r"\1", rst)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", text)
    text = text.replace("``", "").replace("\\.", ".")
    text = re.sub(r"^\.\. [a-z_-]+::.*$|^\.\. _[^:]+:$", "", text, flags=re.M)
    text = re.sub(r"^([=*~-])\1{3,}$", "", text, flags=re.M)
    text = re.sub(r"\*([^*\s][^*]*)\*", r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def write_pdf(rst_path: Path, out: Path) -> None:
    from fpdf import FPDF

    text = rst_to_text(rst_path.read_text("utf-8"))
    text = text.encode("latin-1", "replace").decode("latin-1")  # the core PDF fonts are Latin-1
    pdf = FPDF()
    pdf.set_title("Sorting HOW TO")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("helvetica", size=10)
    for paragraph in text.split("\n\n"):
        if paragraph.startswith("   "):  # a code block: monospace, lines kept
            pdf.set_font("courier", size=9)
            pdf.multi_cell(0, 4.5, paragraph)
            pdf.set_font("helvetica", size=10)
        else:
            pdf.multi_cell(0, 5, " ".join(paragraph.split()))
        pdf.ln(2)
    pdf.output(str(out))


def prepare_corpus(dest: Path) -> dict:
    html = find_python_doc()
    (dest / "tutorial").mkdir(parents=True)
    for page in sorted((html / "tutorial").glob("*.html")):
        shutil.copy(page, dest / "tutorial" / page.name)
    write_pdf(html / "_sources" / "howto" / "sorting.rst.txt", dest / "sorting.pdf")
    return {"html": str(html / "tutorial"), "pages": len(list((dest / "tutorial").glob("*.html"))),
            "pdf_from": str(html / "_sources" / "howto" / "sorting.rst.txt")}


def has_answer(text: str, answers: list[str]) -> bool:
    from polymodal.kb import normalize_answer

    norm = normalize_answer(text)
    return any(normalize_answer(a) and f" {normalize_answer(a)} " in f" {norm} " for a in answers)


def score_answerer(name, answerer, retrievals, questions, threshold, answer_from_fn, refusal=None) -> dict:
    from polymodal.kb import exact_match, f1_score, strip_citations

    rows = []
    start = time.perf_counter()
    for q, r in zip(questions, retrievals):
        if refusal is not None:
            result = answer_from_fn(r, answerer, K_PASSAGES, threshold, refusal)
        else:
            result = answer_from_fn(r, answerer, K_PASSAGES, threshold)
        text = strip_citations(result.text) if result.found else ""
        row = {"id": q["id"], "question": q["question"], "gold": q["answers"], "answer": result.text,
               "refused": not result.found}
        if q["answers"]:
            row.update(em=exact_match(text, q["answers"]) if text else 0.0,
                       f1=f1_score(text, q["answers"]) if text else 0.0)
        rows.append(row)
    seconds = time.perf_counter() - start
    answerable = [r for r in rows if r["gold"]]
    unanswerable = [r for r in rows if not r["gold"]]
    refused = [r for r in rows if r["refused"]]
    correct_refusals = sum(1 for r in refused if not r["gold"])
    out = {"answerer": name, "questions": len(rows), "em": sum(r["em"] for r in answerable) / len(answerable),
           "f1": sum(r["f1"] for r in answerable) / len(answerable),
           "refusal_precision": correct_refusals / len(refused) if refused else float("nan"),
           "refusal_recall": correct_refusals / len(unanswerable),
           "answerable_refused": sum(r["refused"] for r in answerable) / len(answerable),
           "seconds_per_question": seconds / len(rows), "rows": rows}
    out["refusal_balanced_accuracy"] = (out["refusal_recall"] + 1 - out["answerable_refused"]) / 2
    log(f"{name}: EM {out['em']:.3f} F1 {out['f1']:.3f} refusal P {out['refusal_precision']:.2f} "
        f"R {out['refusal_recall']:.2f} ({seconds:.0f} s)")
    return out


def run(args) -> None:
    import torch

    torch.set_num_threads(1)  # the machine is shared: see bench/results/serve.md
    import polymodal
    import polymodal.kb as kbmod
    from polymodal.kb import KnowledgeBase, build_kb

    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    work = Path(tempfile.mkdtemp(prefix="polymodal-bench-kbdocs-"))
    corpus = prepare_corpus(work / "docs")
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    results = {"label": args.label, "polymodal": str(Path(polymodal.__file__).parent), "corpus": corpus,
               "questions": len(questions), "answerable": sum(bool(q["answers"]) for q in questions)}
    t = time.perf_counter()
    report = build_kb([work / "docs"], work / "kb", progress=False)
    results["build"] = {"seconds": time.perf_counter() - t, "chunks": report.chunks, "files": report.files,
                        "problems": [str(p) for p in report.problems]}
    kb = KnowledgeBase(work / "kb")
    chunks = kb.store.chunks()
    furniture = re.compile(r"^(prev|previous|next|home|up|index|modules|navigation|table of contents)\b", re.I)
    results["build"]["furniture_chunks"] = sum(bool(furniture.match(c.text.strip())) or len(c.text.split()) <= 2
                                               for c in chunks)
    log(f"built {report.chunks} chunks from {report.files} files; {len(report.problems)} problems")

    retrievals = kb.retrieve_many([q["question"] for q in questions], k=5, mode="hybrid")
    found = [any(Path(h.chunk.file).name == q["source"] and has_answer(h.chunk.text, q["answers"]) for h in r.hits[:5])
             for q, r in zip(questions, retrievals) if q["answers"]]
    results["recall@5"] = sum(found) / len(found)
    log(f"Recall@5 {results['recall@5']:.3f}")

    threshold = getattr(kbmod, "DEFAULT_THRESHOLD", 0.35)
    answer_from_fn = kbmod.answer_from
    try:  # the calibrated refusal where the checkout has it, else the best-cosine threshold
        from polymodal.kb.refusal import RefusalModel

        refusal = RefusalModel(kb, k=K_PASSAGES)
        results["refusal"] = "RefusalModel (default weights)"
    except ImportError:
        refusal = None
        results["refusal"] = f"best cosine under {threshold}"
    results["answerers"] = {}
    for name, build in extractive_answerers(kbmod, kb):
        results["answerers"][name] = score_answerer(name, build(), retrievals, questions, threshold, answer_from_fn,
                                                    refusal)
    if not args.no_generate:
        from polymodal.kb.lm import load_answer_lm

        model, tokenizer = load_answer_lm("smollm2")
        for name, build in generative_answerers(kbmod, kb, model, tokenizer):
            results["answerers"][name] = score_answerer(name, build(), retrievals, questions, threshold,
                                                        answer_from_fn, refusal)
    kb.close()
    load.append(os.getloadavg()[0])
    results.update(total_s=time.perf_counter() - started, load=load,
                   date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   machine=f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, 1 thread")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"kb_docs-{args.label}.json"
    out.write_text(json.dumps(results, indent=2, default=float))
    log(f"wrote {out} in {results['total_s'] / 60:.1f} min")


def extractive_answerers(kbmod, kb):
    """(name, builder) of the extractive answerers this checkout has."""
    return [("sentence selector", lambda: kbmod.SentenceSelector(kb))]


def generative_answerers(kbmod, kb, model, tokenizer):
    out = [("SmolLM2 generative", lambda: kbmod.GenerativeAnswerer(model, tokenizer, max_new_tokens=24))]
    if hasattr(kbmod, "GroundedAnswerer"):
        out = [("span extractor (MiniLM sentence, SmolLM2 span)", lambda: kbmod.SpanExtractor(kb, model, tokenizer)),
               ("SmolLM2 generative, grounded", lambda: kbmod.GroundedAnswerer(
                   kbmod.GenerativeAnswerer(model, tokenizer, max_new_tokens=24),
                   kbmod.SpanExtractor(kb, model, tokenizer)))]
    return out


def pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def render() -> None:
    runs = {label: json.loads((RESULTS / f"kb_docs-{label}.json").read_text())
            for label in ("before", "after") if (RESULTS / f"kb_docs-{label}.json").exists()}
    any_run = next(iter(runs.values()))
    lines = ["# Knowledge-base QA on real documents: the Python tutorial (HTML) and a PDF", "",
             f"- Corpus: the {any_run['corpus']['pages']} pages of `{any_run['corpus']['html']}` (Debian python3-doc, "
             f"Sphinx HTML with its navigation) and `sorting.pdf`, written by `bench/kb_docs.py` with fpdf2 from "
             f"`{any_run['corpus']['pdf_from']}`.",
             f"- Questions: `bench/kb_docs/questions.jsonl`, {any_run['answerable']} with short answers copied from "
             f"the pages and {any_run['questions'] - any_run['answerable']} in-domain questions they cannot answer; "
             "test only, nothing was tuned on them.",
             "- KB: `build_kb` defaults (all-MiniLM-L6-v2, 200-token chunks, 40 overlap), hybrid retrieval, top "
             f"{K_PASSAGES} passages to the answerer; EM/F1 are SQuAD-normalised over the answerable questions (a "
             "refusal scores 0); refusal precision/recall over all questions.",
             "- Command: `PYTHONPATH=<checkout>/src python bench/kb_docs.py --label before|after`, then `--render`. "
             "\"before\" is main at 6f6e9c4 (a second worktree), \"after\" this branch; same machine, same day.", ""]
    lines += ["- Refusal rule: " + "; ".join(f"{label}: {r.get('refusal', 'best cosine under 0.35')}"
                                           for label, r in runs.items()), ""]
    lines += ["| run | date | chunks | chunks that are navigation | sources refused | Recall@5 | load avg start/end |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for label, r in runs.items():
        b = r["build"]
        lines.append(f"| {label} | {r['date']} | {b['chunks']} | {b['furniture_chunks']} | {len(b['problems'])} | "
                     f"{pct(r['recall@5'])} | {r['load'][0]:.2f} / {r['load'][-1]:.2f} |")
    lines += ["", "| run | answerer | EM | F1 | refusal precision | refusal recall | answerable refused | "
              "s per question |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, r in runs.items():
        for name, a in r["answerers"].items():
            lines.append(f"| {label} | {name} | {pct(a['em'])} | {pct(a['f1'])} | {pct(a['refusal_precision'])} | "
                         f"{pct(a['refusal_recall'])} | {pct(a['answerable_refused'])} | "
                         f"{a['seconds_per_question']:.2f} |")
    for label, r in runs.items():
        for p in r["build"]["problems"][:5]:
            lines.append(f"\n- {label}: source refused: `{p[:200]}`")
    lines += ["", "Examples (first 8 answerable questions, each run's answerers):", "",
              "| question | gold | " + " | ".join(f"{label}: {n}" for label, r in runs.items()
                                                 for n in r["answerers"]) + " |",
              "| --- | --- | " + " | ".join("---" for r in runs.values() for _ in r["answerers"]) + " |"]
    for i in range(8):
        q = any_run["answerers"][next(iter(any_run["answerers"]))]["rows"][i]
        cells = [" ".join(r["answerers"][n]["rows"][i]["answer"].replace("|", "/").split())[:80]
                 for r in runs.values() for n in r["answerers"]]
        lines.append(f"| {q['question']} | {q['gold'][0]} | " + " | ".join(cells) + " |")
    (RESULTS / "kb_docs.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'kb_docs.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after", help="names the result file: kb_docs-LABEL.json")
    parser.add_argument("--no-generate", action="store_true", help="skip the SmolLM2 answerers")
    parser.add_argument("--render", action="store_true", help="only write kb_docs.md from the JSON files")
    args = parser.parse_args()
    render() if args.render else run(args)


if __name__ == "__main__":
    main()
