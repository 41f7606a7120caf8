"""Reports of speech-recognition runs (task ``asr``): WER and CER before and after tuning, per speaker, with a
paired bootstrap interval on the WER difference; or two ASR runs side by side.

An asr run decodes its test clips with the untuned model (``before.csv``) and with the tuned one
(``predictions.csv``); both are scored here with the same normaliser (Whisper's English one), so the report
says how much tuning helped on exactly the same clips.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import PolymodalError
from ._document import Block, Heading, Paragraph, table
from .asr import ASRReport, asr_scores, compare_wer
from .report import COMPARISON_HTML, COMPARISON_MD, REPORT_HTML, REPORT_MD, _write_pair

COLUMNS = ("row", "speaker", "reference", "hypothesis")  # of RUN/predictions.csv and RUN/before.csv
PREDICTIONS_FILE = "predictions.csv"  # the test clips decoded by the tuned model
BEFORE_FILE = "before.csv"  # the same clips decoded by the untuned model


def read_transcripts(path: Path) -> dict[str, list[str]]:
    """An asr run's predictions.csv or before.csv as columns."""
    if not path.exists():
        raise PolymodalError(f"{path}: missing; the run has no test split or did not finish")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [r.get(k, "") for r in rows] for k in COLUMNS}


def _rows(name: str, report: ASRReport) -> tuple[str, ...]:
    o = report.overall
    return (name, f"{100 * o.wer:.2f}%", f"{100 * o.cer:.2f}%", str(o.words.substitutions), str(o.words.deletions),
            str(o.words.insertions), str(o.words.reference_length), str(o.n_utterances))


def _verdict(result, name_a: str, name_b: str) -> str:
    pct = lambda x: f"{100 * x:+.2f}"  # noqa: E731
    interval = f"{pct(result.diff)} points [{pct(result.low)}, {pct(result.high)}] ({100 * result.confidence:.0f}% " \
               f"bootstrap over {result.n_items} utterances, {result.n_resamples} resamples)"
    if result.winner is None:
        return f"WER: {name_b} vs {name_a} {interval}: no clear difference"
    better = name_b if result.winner == "b" else name_a
    return f"WER: {name_b} vs {name_a} {interval}: {better} makes fewer errors"


def _speaker_table(before: ASRReport | None, after: ASRReport, name_a: str, name_b: str):
    speakers = sorted(after.per_speaker)
    if before is None:
        return table(("speaker", "WER", "CER", "utterances"),
                     [(s, f"{100 * after.per_speaker[s].wer:.2f}%", f"{100 * after.per_speaker[s].cer:.2f}%",
                       after.per_speaker[s].n_utterances) for s in speakers])
    return table(("speaker", f"WER {name_a}", f"WER {name_b}", "utterances"),
                 [(s, f"{100 * before.per_speaker[s].wer:.2f}%", f"{100 * after.per_speaker[s].wer:.2f}%",
                   after.per_speaker[s].n_utterances) for s in speakers])


def _blocks(a: dict, b: dict, name_a: str, name_b: str, n_resamples: int, seed: int) -> tuple[list[Block], str]:
    if a["reference"] != b["reference"] or a["row"] != b["row"]:
        raise PolymodalError(f"{name_a} and {name_b} were not tested on the same clips (rows or references differ)")
    speakers = b["speaker"] if any(b["speaker"]) else None
    ra = asr_scores(a["reference"], a["hypothesis"], speakers)
    rb = asr_scores(b["reference"], b["hypothesis"], speakers)
    result = compare_wer(b["reference"], a["hypothesis"], b["hypothesis"], n_resamples=n_resamples, seed=seed)
    verdict = _verdict(result, name_a, name_b)
    blocks: list[Block] = [
        Paragraph(verdict),
        table(("model", "WER", "CER", "substitutions", "deletions", "insertions", "reference words", "utterances"),
              [_rows(name_a, ra), _rows(name_b, rb)]),
        Paragraph("Texts are normalised with Whisper's English normaliser (lower case, punctuation removed, spoken "
                  "numbers as digits) before scoring; corpus WER = word errors / reference words."),
    ]
    if speakers is not None:
        blocks += [Heading("Per speaker"), _speaker_table(ra, rb, name_a, name_b)]
    changed = [(r, ref, ha, hb) for r, ref, ha, hb in zip(b["row"], b["reference"], a["hypothesis"], b["hypothesis"])
               if ha != hb][:20]
    if changed:
        blocks += [Heading("Transcripts that changed (first 20)"),
                   table(("row", "reference", name_a, name_b), changed, numeric_from=4)]
    return blocks, verdict


def report_asr_run(run_dir: str | Path, out_dir: str | Path | None = None, n_resamples: int = 1000,
                   seed: int = 0) -> tuple[Path, Path]:
    """``report.md`` / ``report.html`` of an asr run: before vs after tuning on its test clips."""
    run_dir = Path(run_dir)
    after = read_transcripts(run_dir / PREDICTIONS_FILE)
    info = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    if (run_dir / BEFORE_FILE).exists():
        blocks, _ = _blocks(read_transcripts(run_dir / BEFORE_FILE), after, "before tuning", "after tuning",
                            n_resamples, seed)
    else:
        speakers = after["speaker"] if any(after["speaker"]) else None
        report = asr_scores(after["reference"], after["hypothesis"], speakers)
        blocks = [table(("model", "WER", "CER", "substitutions", "deletions", "insertions", "reference words",
                         "utterances"), [_rows(run_dir.name, report)])]
        if speakers is not None:
            blocks += [Heading("Per speaker"), _speaker_table(None, report, "", "")]
    extra = {k.replace("_", " "): info[k] for k in ("n_train", "n_val", "n_test", "train_seconds") if k in info}
    if "parameters" in info:
        extra["trainable parameters"] = info["parameters"]["trainable"]
    if extra:
        blocks += [Heading("Run"), table(("", "value"), list(extra.items()))]
    out = Path(out_dir or run_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    return _write_pair(out, REPORT_MD, REPORT_HTML, f"{run_dir.name}: speech recognition", blocks)


def compare_asr_runs(run_a: str | Path, run_b: str | Path, out_dir: str | Path, n_resamples: int = 1000,
                     seed: int = 0) -> tuple[Path, Path]:
    """Two asr runs tested on the same clips, side by side, with the bootstrap interval on B's WER minus A's."""
    run_a, run_b = Path(run_a), Path(run_b)
    blocks, _ = _blocks(read_transcripts(run_a / PREDICTIONS_FILE), read_transcripts(run_b / PREDICTIONS_FILE),
                        run_a.name, run_b.name, n_resamples, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _write_pair(out, COMPARISON_MD, COMPARISON_HTML, f"{run_a.name} vs {run_b.name}: speech recognition",
                       blocks)
