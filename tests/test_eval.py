"""The evaluation layer: golden metrics, paired bootstrap, plots, and the Markdown/HTML reports."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from polymodal.eval import (
    ALL_MODALITIES,
    BootstrapResult,
    ClassificationMetrics,
    classification_metrics,
    paired_bootstrap,
    paired_bootstrap_per_item,
    plot_confusion,
    plot_modality_ablation,
    plot_per_class_f1,
    plot_training_curves,
    verdict,
    write_comparison,
    write_report,
)
from polymodal.eval.bootstrap import _MacroF1Statistic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --- a tiny golden example: 3 classes, 8 items --------------------------------------------------------------
#
#   y_true = [0, 0, 0, 0, 1, 1, 1, 2]      supports 4, 3, 1
#   y_pred = [0, 0, 0, 1, 1, 1, 2, 1]
#
#   confusion (rows true, columns predicted):   [[3, 1, 0],
#                                                [0, 2, 1],
#                                                [0, 1, 0]]      column sums 3, 4, 1
#   class 0: TP 3, P = 3/3 = 1,   R = 3/4,  F1 = 2 * 1 * 3/4 / (1 + 3/4)      = 6/7
#   class 1: TP 2, P = 2/4 = 1/2, R = 2/3,  F1 = 2 * 1/2 * 2/3 / (1/2 + 2/3)  = 4/7
#   class 2: TP 0, P = 0/1 = 0,   R = 0/1,  F1 = 0
#   accuracy = 5/8; macro P = 1/2; macro R = (3/4 + 2/3) / 3 = 17/36; macro F1 = (6/7 + 4/7) / 3 = 10/21
#   chance = 1/3; majority class 0: 4/8 = 1/2
GOLDEN_TRUE = [0, 0, 0, 0, 1, 1, 1, 2]
GOLDEN_PRED = [0, 0, 0, 1, 1, 1, 2, 1]
GOLDEN_LABELS = ["<b>cat</b>", "dog", "bird"]


@pytest.fixture
def golden() -> ClassificationMetrics:
    return classification_metrics(GOLDEN_TRUE, GOLDEN_PRED, GOLDEN_LABELS)


def _clear_win(n: int = 200, k: int = 40):
    """4 classes, n items; A right on the first n/2 items, B right on those and on k more (never worse)."""
    y = np.arange(n) % 4
    wrong = (y + 1) % 4
    pred_a = np.where(np.arange(n) < n // 2, y, wrong)
    pred_b = np.where(np.arange(n) < n // 2 + k, y, wrong)
    return y, pred_a, pred_b


# --- metrics --------------------------------------------------------------------------------------------------


def test_metrics_match_hand_computed_golden_values(golden):
    assert golden.accuracy == pytest.approx(5 / 8)
    assert golden.macro_precision == pytest.approx(1 / 2)
    assert golden.macro_recall == pytest.approx(17 / 36)
    assert golden.macro_f1 == pytest.approx(10 / 21)
    cat, dog, bird = (golden.per_class[label] for label in GOLDEN_LABELS)
    assert cat == pytest.approx((1.0, 3 / 4, 6 / 7, 4))
    assert dog == pytest.approx((1 / 2, 2 / 3, 4 / 7, 3))
    assert bird == pytest.approx((0.0, 0.0, 0.0, 1))
    assert (dog.precision, dog.recall, dog.support) == pytest.approx((0.5, 2 / 3, 3))
    assert golden.n_items == 8
    assert golden.chance_level == pytest.approx(1 / 3)
    assert (golden.majority_label, golden.majority_rate) == ("<b>cat</b>", 0.5)


def test_confusion_rows_are_true_classes_and_columns_predicted(golden):
    np.testing.assert_array_equal(golden.confusion, [[3, 1, 0], [0, 2, 1], [0, 1, 0]])
    # One true "cat" was predicted "dog", no true "dog" was predicted "cat": transposing would swap these.
    assert golden.confusion[0, 1] == 1 and golden.confusion[1, 0] == 0
    assert golden.confusion.sum(axis=1).tolist() == [4, 3, 1]  # row sums are the true-class supports
    with pytest.raises(ValueError):
        golden.confusion[0, 0] = 99  # frozen result: the matrix is read-only too


def test_macro_average_counts_every_label_as_sklearn_does():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)  # class 4 never occurs in the truth
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    m = classification_metrics(y, pred, ["a", "b", "c", "d", "e"])
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=range(5), average="macro", zero_division=0)
    assert (m.macro_precision, m.macro_recall, m.macro_f1) == pytest.approx((p, r, f))
    assert m.per_class["e"].support == 0
    assert m.confusion.shape == (5, 5)


@pytest.mark.parametrize("seed", range(5))
def test_per_epoch_scores_equal_sklearn(seed):
    """The loop's per-epoch validation scores come from one bincount, not sklearn (1.3 ms of checks per epoch):
    they must equal sklearn's accuracy and macro F1, classes missing from truth or predictions included."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    from polymodal.classify.predict import scores

    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 200)), int(rng.integers(2, 12))
    y = rng.integers(0, k - 1, n)  # the last class never occurs in the truth
    probs = torch.from_numpy(rng.random((n, k)))
    pred = probs.argmax(-1).numpy()
    got = scores(torch.from_numpy(y), probs)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_metrics_round_trip_through_json(golden):
    data = json.loads(json.dumps(golden.to_dict()))
    assert data["accuracy"] == 0.625 and data["n_items"] == 8 and data["confusion"][0] == [3, 1, 0]
    back = ClassificationMetrics.from_dict(data)
    assert back.labels == golden.labels and back.per_class == golden.per_class
    np.testing.assert_array_equal(back.confusion, golden.confusion)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "message"),
    [
        ([0, 1, 3], [0, 1, 1], ["a", "b", "c"], "outside"),
        ([0, 1, 2], [0, 1], ["a", "b", "c"], "same test items"),
        ([0, 1], [0, 1], ["a", "a"], "unique"),
        ([0.0, 1.0], [0, 1], ["a", "b"], "integer"),
        ([], [], ["a", "b"], "empty"),
    ],
)
def test_metrics_reject_bad_input_with_a_clear_message(y_true, y_pred, labels, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_pred, labels)


# --- paired bootstrap -----------------------------------------------------------------------------------------


def test_bootstrap_gives_exactly_k_over_n_when_b_is_right_on_k_more_items():
    y, a, b = _clear_win(n=200, k=40)
    r = paired_bootstrap(y, a, b, "accuracy")
    assert (r.a, r.b) == (100 / 200, 140 / 200)
    assert r.diff == 40 / 200  # exactly, not approximately
    assert 0 < r.low <= r.diff <= r.high
    assert r.p_value_like == 0.0  # B is never worse on any item, so no resample favours A
    assert r.winner == "b" and r.excludes_zero


def test_bootstrap_diff_is_exact_with_items_gained_and_lost():
    y = np.arange(200) % 4
    wrong = (y + 1) % 4
    a = np.where(np.arange(200) < 100, y, wrong)
    b = a.copy()
    b[100:130] = y[100:130]  # B gains 30 items
    b[:10] = wrong[:10]  # and loses 10
    r = paired_bootstrap(y, a, b)
    assert r.diff == 20 / 200
    assert r.low <= r.diff <= r.high


def test_bootstrap_of_identical_predictions_is_zero_with_a_zero_interval():
    y, a, _ = _clear_win()
    for metric in ("accuracy", "macro_f1"):
        r = paired_bootstrap(y, a, a.copy(), metric, n_labels=4)
        assert (r.diff, r.low, r.high) == (0.0, 0.0, 0.0)
        assert r.p_value_like == 1.0 and r.winner is None


def test_bootstrap_is_reproducible_under_a_seed_and_varies_across_seeds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    a = np.where(rng.random(500) < 0.7, y, rng.integers(0, 3, 500))
    b = np.where(rng.random(500) < 0.72, y, rng.integers(0, 3, 500))
    for metric in ("accuracy", "macro_f1"):
        first = paired_bootstrap(y, a, b, metric, n_resamples=300, seed=7)
        assert paired_bootstrap(y, a, b, metric, n_resamples=300, seed=7) == first
        other = paired_bootstrap(y, a, b, metric, n_resamples=300, seed=8)
        assert (other.low, other.high) != (first.low, first.high)
        assert (other.a, other.b, other.diff) == (first.a, first.b, first.diff)  # point estimates do not resample


def test_bootstrap_interval_has_the_width_of_a_paired_difference():
    # 400 items; per-item delta = correct_B - correct_A is +1 on 80 items, -1 on 20, else 0.
    # Paired: sd of the mean delta = sqrt((100/400 - 0.15^2) / 400) = 0.02385, so the 95% half-width is
    # about 1.96 * 0.02385 = 0.0467. Resampling A and B independently would give about 0.068 instead.
    y = np.zeros(400, dtype=int)
    idx = np.arange(400)
    a = np.where(idx < 200, 0, 1)
    b = np.where((idx >= 20) & (idx < 280), 0, 1)
    r = paired_bootstrap(y, a, b, n_resamples=4000, seed=1)
    assert r.diff == pytest.approx(0.15)
    assert (r.high - r.low) / 2 == pytest.approx(1.96 * np.sqrt((0.25 - 0.15**2) / 400), rel=0.12)
    assert (r.high + r.low) / 2 == pytest.approx(0.15, abs=0.01)
    wider = paired_bootstrap(y, a, b, n_resamples=4000, seed=1, confidence=0.99)
    assert wider.low < r.low and wider.high > r.high


def test_bootstrap_macro_f1_matches_sklearn_on_the_full_set_and_on_resamples():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 120)  # class 4 is in no truth: it still counts in the macro mean, as 0
    a = np.where(rng.random(120) < 0.6, y, rng.integers(0, 5, 120))
    b = np.where(rng.random(120) < 0.8, y, rng.integers(0, 5, 120))
    labels = ["a", "b", "c", "d", "e"]
    r = paired_bootstrap(y, a, b, "macro_f1", n_resamples=50, n_labels=5)
    assert r.a == pytest.approx(classification_metrics(y, a, labels).macro_f1, abs=1e-12)
    assert r.b == pytest.approx(classification_metrics(y, b, labels).macro_f1, abs=1e-12)

    indices = rng.integers(0, 120, size=(6, 120))
    score_a, score_b, diff = _MacroF1Statistic(y, a, b, 5)(indices)
    for row, i in enumerate(indices):
        kw = {"labels": range(5), "average": "macro", "zero_division": 0}
        assert score_a[row] == pytest.approx(f1_score(y[i], a[i], **kw), abs=1e-12)
        assert score_b[row] == pytest.approx(f1_score(y[i], b[i], **kw), abs=1e-12)
    np.testing.assert_allclose(diff, score_b - score_a)


def test_per_item_bootstrap_reads_lower_is_better_scores_the_right_way():
    errors_a = np.array([1] * 50 + [0] * 50)  # per-item error indicator: lower is better
    errors_b = np.array([0] * 30 + [1] * 20 + [0] * 50)  # B fixes 30 of A's errors, adds none
    r = paired_bootstrap_per_item(errors_a, errors_b, metric="error", higher_is_better=False)
    assert r.diff == -30 / 100 and r.high < 0
    assert r.winner == "b" and r.p_value_like == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "wer"}, "unknown bootstrap metric"),
        ({"confidence": 1.0}, "confidence"),
        ({"n_resamples": 0}, "n_resamples"),
    ],
)
def test_bootstrap_rejects_bad_parameters(kwargs, message):
    y, a, b = _clear_win()
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(y, a, b, **kwargs)
    with pytest.raises(ValueError, match="same test items"):
        paired_bootstrap(y, a, b[:-1])


# --- plots ----------------------------------------------------------------------------------------------------

TRAINING_CSV = """epoch,step,train_loss,val_loss,val_accuracy,val_macro_f1,lr
0,10,1.20,,,,0.001
0,20,0.90,0.95,0.55,0.50,0.001
1,30,0.70,,,,0.0008
1,40,0.55,0.70,0.68,0.64,0.0008
2,50,0.45,,,,0.0005
2,60,0.40,0.62,0.74,0.71,0.0005
"""


def _log_rows() -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(TRAINING_CSV)))


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000  # a real drawing, not an empty canvas
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 200
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # more than a blank background


@pytest.mark.parametrize(
    "draw",
    [
        lambda m, p: plot_confusion(m, p),
        lambda m, p: plot_per_class_f1(m, p),
        lambda m, p: plot_training_curves(_log_rows(), p),
        lambda m, p: plot_modality_ablation({ALL_MODALITIES: 0.8, "text": 0.5, "image": 0.75}, p),
    ],
    ids=["confusion", "per_class_f1", "training_curves", "modality_ablation"],
)
def test_plots_write_valid_png_files_atomically(draw, golden, tmp_path):
    path = tmp_path / "plots" / "figure.png"
    assert draw(golden, path) == path
    _assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]  # no temporary file left behind


def test_plot_inputs_without_anything_to_draw_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no loss or metric column"):
        plot_training_curves([{"epoch": "0", "note": "warmup"}], tmp_path / "c.png")
    with pytest.raises(ValueError, match="'all'"):
        plot_modality_ablation({"text": 0.5}, tmp_path / "a.png")
    assert not list(tmp_path.iterdir())


# --- reports --------------------------------------------------------------------------------------------------


def _embedded_pngs(html_text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)]


def test_report_writes_markdown_with_the_numbers_and_a_self_contained_html(golden, tmp_path):
    md_path, html_path = write_report(
        tmp_path / "run",
        "Run <script>alert(1)</script>",
        golden,
        training_log=_log_rows(),
        ablation={ALL_MODALITIES: 0.7, "text": 0.5, "image": 0.65},
        extra={"trainable parameters": 1_234_567, "training time (s)": 81.234},
    )
    assert (md_path.name, html_path.name) == ("report.md", "report.html")
    md, page = md_path.read_text(), html_path.read_text()

    for row in [
        "| accuracy | 0.6250 |",
        "| macro precision | 0.5000 |",
        "| macro recall | 0.4722 |",
        "| macro F1 | 0.4762 |",
        "| test items | 8 |",
        "| chance level (1 / classes) | 0.3333 |",
        "| majority-class rate (always &lt;b&gt;cat&lt;/b&gt;) | 0.5000 |",
        "| dog | 0.5000 | 0.6667 | 0.5714 | 3 |",
        "| bird | 0.0000 | 0.0000 | 0.0000 | 1 |",
        "| trainable parameters | 1,234,567 |",
        "| training time (s) | 81.23 |",
        "| none (all modalities) | 0.7000 |  |",
        "| text | 0.5000 | -0.2000 |",
        "| image | 0.6500 | -0.0500 |",
        "| &lt;b&gt;cat&lt;/b&gt; | 3 | 1 | 0 |",  # a confusion-table row: true cat, predicted cat/dog/bird
    ]:
        assert row in md, row
    for png in ["per_class_f1.png", "confusion.png", "training_curves.png", "modality_ablation.png"]:
        assert f"]({png})" in md
        _assert_png(tmp_path / "run" / png)

    assert "<b>cat</b>" not in page and "&lt;b&gt;cat&lt;/b&gt;" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    embedded = _embedded_pngs(page)
    assert len(embedded) == 4 and all(png[:8] == PNG_SIGNATURE for png in embedded)
    assert embedded[0] == (tmp_path / "run" / "per_class_f1.png").read_bytes()
    assert 'src="per_class_f1.png"' not in page  # nothing linked: the HTML is one file to share
    assert "<td class=\"num\">0.6250</td>" in page


def test_report_with_a_bad_ablation_fails_before_writing_anything(golden, tmp_path):
    with pytest.raises(ValueError, match="finite"):
        write_report(tmp_path / "run", "bad", golden, ablation={ALL_MODALITIES: 0.7, "text": float("nan")})
    assert not (tmp_path / "run").exists()


def test_report_without_log_or_ablation_leaves_those_sections_out(golden, tmp_path):
    md_path, html_path = write_report(tmp_path, "plain", golden)
    md = md_path.read_text()
    assert "Training curves" not in md and "Per-modality contribution" not in md
    assert not (tmp_path / "training_curves.png").exists() and not (tmp_path / "modality_ablation.png").exists()
    assert len(_embedded_pngs(html_path.read_text())) == 2


def test_comparison_verdict_flips_between_a_clear_win_and_an_identical_pair(tmp_path):
    y, a, b = _clear_win(n=200, k=40)
    labels = ["w", "x", "y", "z"]
    ma, mb = classification_metrics(y, a, labels), classification_metrics(y, b, labels)
    results = {m: paired_bootstrap(y, a, b, m, n_labels=4) for m in ("accuracy", "macro_f1")}
    md_path, html_path = write_comparison(tmp_path / "win", "probe", ma, "<i>tuned</i>", mb, results)
    md, page = md_path.read_text(), html_path.read_text()
    acc = results["accuracy"]
    expected = f"&lt;i&gt;tuned&lt;/i&gt; is better: the 95% interval [{acc.low:+.4f}, {acc.high:+.4f}] excludes 0"
    assert f"accuracy: {expected}." in md and expected in page
    assert "| accuracy | 0.5000 | 0.7000 | +0.2000 |" in md
    assert "no clear difference" not in md
    assert "<i>tuned</i>" not in page
    assert len(_embedded_pngs(page)) == 2 and (tmp_path / "win" / "confusion_b.png").is_file()

    same = {m: paired_bootstrap(y, a, a.copy(), m, n_labels=4) for m in ("accuracy", "macro_f1")}
    md = write_comparison(tmp_path / "same", "probe", ma, "copy", ma, same)[0].read_text()
    assert "accuracy: no clear difference: the 95% interval [+0.0000, +0.0000] includes 0." in md
    assert "macro F1: no clear difference" in md and "is better" not in md

    worse = {"accuracy": paired_bootstrap(y, b, a)}
    md = write_comparison(tmp_path / "worse", "tuned", mb, "probe", ma, worse)[0].read_text()
    assert "accuracy: tuned is better: the 95% interval" in md


def test_verdict_wording():
    common = {"metric": "accuracy", "a": 0.5, "b": 0.6, "diff": 0.1, "p_value_like": 0.0, "confidence": 0.95,
              "n_resamples": 1000, "n_items": 200}
    assert verdict(BootstrapResult(low=0.05, high=0.15, **common), "A", "B") == (
        "B is better: the 95% interval [+0.0500, +0.1500] excludes 0"
    )
    assert verdict(BootstrapResult(low=-0.01, high=0.15, **common)) == (
        "no clear difference: the 95% interval [-0.0100, +0.1500] includes 0"
    )


def test_comparison_refuses_results_that_do_not_match_the_metrics(tmp_path):
    y, a, b = _clear_win()
    labels = ["w", "x", "y", "z"]
    ma, mb = classification_metrics(y, a, labels), classification_metrics(y, b, labels)
    with pytest.raises(ValueError, match="swapped"):
        write_comparison(tmp_path, "A", ma, "B", mb, {"accuracy": paired_bootstrap(y, b, a)})
    with pytest.raises(ValueError, match="same test set"):
        short = classification_metrics(y[:-1], b[:-1], labels)
        write_comparison(tmp_path, "A", ma, "B", short, {})
    assert not list(tmp_path.iterdir())
