"""Bootstrap intervals, reader comparison, McNemar, READS.csv, the report, plots, inference."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from fedxray.errors import FedxrayError
from fedxray.evaluation import evaluate
from fedxray.evaluation.bootstrap import (
    Resampler,
    bootstrap_ci,
    cluster_index,
    percentile_interval,
)
from fedxray.evaluation.inference import predict_proba
from fedxray.evaluation.metrics import compute_metrics
from fedxray.evaluation.plots import PLOT_FILES
from fedxray.evaluation.reference import (
    NOT_READ,
    binomial_two_sided,
    compare_reader,
    mcnemar,
    read_reads_csv,
)
from fedxray.models.inputs import images_to_tensor
from fedxray.steps.evaluate import plot_report

CLASSES = ["normal", "bacterial", "viral"]


def _case(seed: int, n: int, k: int = 3, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_is_seeded_and_reproducible():
    y, p = _case(0, 80)
    a = bootstrap_ci(y, p, CLASSES, n_boot=200, seed=3)
    b = bootstrap_ci(y, p, CLASSES, n_boot=200, seed=3)
    c = bootstrap_ci(y, p, CLASSES, n_boot=200, seed=4)
    assert a == b
    assert a["accuracy"] != c["accuracy"] or a["macro_roc_auc"] != c["macro_roc_auc"]
    point = compute_metrics(y, p, CLASSES).values
    for name in ("accuracy", "macro_roc_auc", "binary_roc_auc", "mcc", "kappa"):
        iv = a[name]
        assert iv.n_valid == 200 and iv.low < iv.high
        assert iv.low <= point[name] <= iv.high, name


def test_interval_is_the_percentile_of_resampled_values():
    # Re-derive the accuracy interval by hand from the same seeded draws.
    y, p = _case(1, 50)
    correct = (p.argmax(1) == y).astype(float)
    w = Resampler(50, None, seed=9).weights(300)
    accs = (w * correct).sum(1) / w.sum(1)
    iv = bootstrap_ci(y, p, CLASSES, n_boot=300, seed=9)["accuracy"]
    assert iv.low == pytest.approx(np.percentile(accs, 2.5))
    assert iv.high == pytest.approx(np.percentile(accs, 97.5))
    assert (w.sum(1) == 50).all()  # every resample has the data's size


def test_patient_resampling_keeps_patients_together():
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    w = Resampler(6, groups, seed=0).weights(50)
    # All images of a patient share the patient's draw count.
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all()
    assert (w[:, 4] == w[:, 5]).all()
    assert not (w[:, 0] == w[:, 3]).all()


def test_clustering_widens_the_interval_when_images_are_duplicated():
    # 60 patients with one image each, then every image copied 5 times under its patient.
    y, p = _case(2, 60, signal=0.8)
    y5, p5 = np.repeat(y, 5), np.repeat(p, 5, axis=0)
    groups = np.repeat([f"patient{i:02d}" for i in range(60)], 5)
    by_image = bootstrap_ci(y5, p5, CLASSES, n_boot=400, seed=0)["accuracy"]
    by_patient = bootstrap_ci(y5, p5, CLASSES, groups, n_boot=400, seed=0)["accuracy"]
    original = bootstrap_ci(y, p, CLASSES, n_boot=400, seed=0)["accuracy"]
    width = {k: iv.high - iv.low for k, iv in dict(i=by_image, p=by_patient, o=original).items()}
    # Copies look like 300 independent images (about sqrt(5) too narrow); patients do not.
    assert width["p"] > 1.6 * width["i"]
    # Sorted pseudonyms draw the same patients as the 60 originals: the very same interval.
    assert (by_patient.low, by_patient.high) == (original.low, original.high)


def test_one_image_per_patient_equals_image_resampling():
    y, p = _case(3, 40)
    groups = np.array([f"p{i:03d}" for i in range(40)])  # sorted like the images
    assert bootstrap_ci(y, p, CLASSES, groups, n_boot=100) == bootstrap_ci(
        y, p, CLASSES, n_boot=100
    )


def test_images_without_pseudonym_are_their_own_patients():
    cluster, n = cluster_index(np.array(["b", "", None, "b", "a"], dtype=object), 5)
    assert n == 4
    assert cluster[0] == cluster[3]
    assert len({cluster[1], cluster[2], cluster[0], cluster[4]}) == 4
    with pytest.raises(FedxrayError, match="shape"):
        cluster_index(["a"], 2)


def test_rare_class_intervals_use_fewer_resamples_with_a_note():
    y, p = _case(4, 40)
    y[y == 2] = 1
    y[0] = 2  # a single viral image: absent from about a third of the resamples
    report = evaluate(y, p, CLASSES, n_boot=200, seed=0)
    iv = report.intervals["recall/viral"]
    assert 0 < iv.n_valid < 200
    assert any("recall/viral" in n for n in report.notes)
    assert report.intervals["accuracy"].n_valid == 200


def test_percentile_interval_edge_cases():
    assert percentile_interval(np.array([np.nan, np.nan])).low is None
    iv = percentile_interval(np.array([1.0, np.nan, 3.0]), level=0.5)
    assert (iv.low, iv.high, iv.n_valid) == (1.5, 2.5, 2)
    with pytest.raises(FedxrayError, match="level"):
        percentile_interval(np.array([1.0]), level=95)


# ---------------------------------------------------------------- McNemar


def test_mcnemar_exact_by_hand_and_against_scipy():
    model = np.array([True] * 10 + [False] * 2 + [True] * 5)
    reader = np.array([False] * 10 + [True] * 2 + [True] * 5)
    t = mcnemar(model, reader)
    assert (t.b, t.c, t.method) == (10, 2, "exact binomial")
    # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158 / 4096
    assert t.p_value == pytest.approx(158 / 4096)
    assert t.p_value == pytest.approx(stats.binomtest(10, 12, 0.5).pvalue)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (3, 7), (7, 7), (5, 10), (12, 30), (40, 2000)])
def test_binomial_matches_scipy(k, n):
    assert binomial_two_sided(k, n) == pytest.approx(stats.binomtest(k, n, 0.5).pvalue, rel=1e-9)


def test_mcnemar_chi_square_against_scipy():
    model = np.array([True] * 30 + [False] * 10 + [True] * 20 + [False] * 5)
    reader = np.array([False] * 30 + [True] * 10 + [True] * 20 + [False] * 5)
    t = mcnemar(model, reader)
    assert (t.b, t.c) == (30, 10)
    assert t.method.startswith("chi-square")
    assert t.statistic == pytest.approx((20 - 1) ** 2 / 40)
    assert t.p_value == pytest.approx(stats.chi2.sf(361 / 40, df=1))
    forced = mcnemar(model, reader, exact=True)
    assert forced.p_value == pytest.approx(stats.binomtest(30, 40, 0.5).pvalue)


def test_mcnemar_without_discordant_pairs():
    t = mcnemar(np.array([True, False]), np.array([True, False]))
    assert (t.b, t.c, t.p_value) == (0, 0, 1.0)


# ---------------------------------------------------------------- reader comparison


def test_reader_comparison_end_to_end():
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    p = np.array(
        [
            [0.8, 0.1, 0.1],  # right
            [0.3, 0.6, 0.1],  # wrong
            [0.1, 0.8, 0.1],  # right
            [0.1, 0.7, 0.2],  # right
            [0.2, 0.2, 0.6],  # right
            [0.5, 0.2, 0.3],  # wrong
            [0.6, 0.2, 0.2],  # not read
            [0.2, 0.6, 0.2],  # not read
        ]
    )
    reads = np.array([0, 0, 2, 1, 1, 2, NOT_READ, NOT_READ])  # right, right, wrong, right, ...
    groups = np.array(["a", "a", "b", "c", "d", "e", "f", "g"])
    report = evaluate(y, p, CLASSES, groups=groups, reader=reads, n_boot=100, seed=1)
    cmp = report.reader
    assert (cmp.n_images, cmp.n_unread) == (6, 2)
    # Model right on images 0,2,3,4; reader right on 0,1,3,5 of the six read.
    assert cmp.model.values["accuracy"] == pytest.approx(4 / 6)
    assert cmp.reader.values["accuracy"] == pytest.approx(4 / 6)
    assert cmp.difference["accuracy"] == pytest.approx(0.0)
    assert (cmp.mcnemar.b, cmp.mcnemar.c) == (2, 2)  # model-only: 2, 4; reader-only: 1, 5
    assert cmp.mcnemar.p_value == pytest.approx(1.0)
    assert cmp.reader.values["macro_roc_auc"] is None
    # Reader binary task: abnormal 2,3,4,5 all called abnormal; normal 0,1 both normal.
    assert cmp.reader.values["sensitivity"] == 1.0 and cmp.reader.values["specificity"] == 1.0
    assert cmp.model.values == compute_metrics(y[:6], p[:6], CLASSES).values
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    row = d["reader"]["metrics"]["accuracy"]
    assert row["reader"]["value"] == pytest.approx(4 / 6)
    assert row["model_minus_reader"]["low"] <= 0 <= row["model_minus_reader"]["high"]
    assert "macro_roc_auc" not in d["reader"]["metrics"]
    assert d["reader"]["mcnemar"]["method"] == "exact binomial"
    assert any("patients" in n for n in d["reader"]["notes"])


def test_reader_paired_difference_ci_is_tighter_than_unpaired():
    # The reader agrees with the model on most images: pairing removes the shared variation.
    y, p = _case(5, 200)
    rng = np.random.default_rng(0)
    reads = np.where(rng.random(200) < 0.9, p.argmax(1), rng.integers(0, 3, 200))
    cmp = compare_reader(y, p, CLASSES, reads, n_boot=300, seed=0)
    d = cmp.difference_ci["accuracy"]
    m = cmp.model_ci["accuracy"]
    assert (d.high - d.low) < 0.6 * (m.high - m.low)


def test_reader_input_checked():
    y, p = _case(6, 5)
    with pytest.raises(FedxrayError, match="none of"):
        compare_reader(y, p, CLASSES, np.full(5, NOT_READ))
    with pytest.raises(FedxrayError, match="reader labels out of range"):
        compare_reader(y, p, CLASSES, np.array([0, 1, 7, 0, 0]))
    with pytest.raises(FedxrayError, match="5 images but 3"):
        compare_reader(y, p, CLASSES, np.array([0, 1, 2]))


# ---------------------------------------------------------------- READS.csv

IDS = np.array(["id-a", "id-b", "id-c", "id-d"])


def test_reads_by_image_id():
    csv = b"image_id,label\nid-c,Viral\nid-a,normal\n\n"
    assert read_reads_csv(csv, CLASSES, IDS).tolist() == [0, NOT_READ, 2, NOT_READ]


def test_reads_by_file_with_bom_and_semicolons(tmp_path):
    path = tmp_path / "READS.csv"
    path.write_bytes("\ufeffFile;Label\nx/b.jpeg; bacterial \nx/d.jpeg;NORMAL\n".encode())
    keyed = {"x/b.jpeg": "id-b", "x/d.jpeg": "id-d"}
    out = read_reads_csv(path, CLASSES, IDS, image_id_of=lambda f: keyed.get(f, "?"))
    assert out.tolist() == [NOT_READ, 1, NOT_READ, 0]


def test_reads_errors_list_offending_lines():
    with pytest.raises(FedxrayError) as e:
        read_reads_csv(b"image_id,label\nid-a,pneumonia\nid-b,normal\nid-c,\n", CLASSES, IDS)
    assert "2 row(s)" in e.value.message and "line 2 'pneumonia'" in e.value.message
    assert "line 4 ''" in e.value.message and "normal, bacterial, viral" in e.value.hint
    with pytest.raises(FedxrayError, match=r"match no image.*line 3 'id-z'"):
        read_reads_csv(b"image_id,label\nid-a,viral\nid-z,normal\n", CLASSES, IDS)
    with pytest.raises(FedxrayError, match="read twice"):
        read_reads_csv(b"image_id,label\nid-a,viral\nid-a,normal\n", CLASSES, IDS)
    # The same read twice is harmless.
    ok = read_reads_csv(b"image_id,label\nid-a,viral\nid-a,viral\n", CLASSES, IDS)
    assert ok[0] == 2
    many = b"image_id,label\n" + b"".join(b"zz%d,normal\n" % i for i in range(9))
    with pytest.raises(FedxrayError, match=r"9 row.*and 4 more"):
        read_reads_csv(many, CLASSES, IDS)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"image,diagnosis\na,normal\n", "no 'label' column"),
        (b"name,label\na,normal\n", "no 'image_id' or 'file'"),
        (b"", "empty"),
        (b"image_id,label\n", "no reads"),
        (b"image_id,label\n\xff\xfe,normal\n", "UTF-8"),
        (b"file,label\na.jpeg,normal\n", "site key"),
    ],
)
def test_reads_file_errors(data, message):
    with pytest.raises(FedxrayError, match=message):
        read_reads_csv(data, CLASSES, IDS)


def test_reads_need_image_ids():
    with pytest.raises(FedxrayError, match="no image ids"):
        read_reads_csv(b"image_id,label\na,normal\n", CLASSES, None)


# ---------------------------------------------------------------- report


def test_report_dict_is_json_ready_and_complete():
    y, p = _case(7, 120)
    groups = np.array([f"p{i // 2}" for i in range(120)])
    calls = []
    report = evaluate(
        y, p, CLASSES, groups=groups, n_boot=150, seed=2, progress=lambda a, b: calls.append((a, b))
    )
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["n_images"] == 120 and d["n_patients"] == 60
    assert d["bootstrap"]["unit"] == "patient" and d["bootstrap"]["resamples"] == 150
    assert d["binary_task"]["positive"] == ["bacterial", "viral"]
    acc = d["metrics"]["accuracy"]
    assert acc["value"] == pytest.approx(float(np.mean(p.argmax(1) == y)))
    assert acc["low"] <= acc["value"] <= acc["high"]
    assert set(d["per_class"]) == set(CLASSES)
    assert sum(row["support"] for row in d["per_class"].values()) == 120
    assert np.array(d["confusion_matrix"]["counts"]).sum() == 120
    assert set(d["roc_curves"]) == {*CLASSES, "binary"}
    assert d["reader"] is None
    assert calls[-1] == (150, 150)


def test_report_without_bootstrap_and_degenerate_data():
    y = np.zeros(4, dtype=int)
    p = np.array([[0.9, 0.05, 0.05]] * 4)
    report = evaluate(y, p, CLASSES, n_boot=0)
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["bootstrap"] is None and "low" not in d["metrics"]["accuracy"]
    assert d["metrics"]["mcc"]["value"] is None
    assert d["roc_curves"]["normal"] is None
    assert d["notes"]
    with pytest.raises(FedxrayError, match="resamples"):
        evaluate(y, p, CLASSES, n_boot=-1)


def test_report_with_degenerate_bootstrap_is_json_ready():
    y = np.array([0, 0, 0, 1])
    p = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    d = evaluate(y, p, CLASSES, n_boot=50).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["metrics"]["macro_roc_auc"] == {"value": None, "low": None, "high": None, "n_valid": 0}


# ---------------------------------------------------------------- plots


def test_plots_are_written_atomically_and_not_overwritten(tmp_path):
    pytest.importorskip("matplotlib")
    y, p = _case(8, 60)
    reads = np.where(np.arange(60) % 2 == 0, y, NOT_READ)
    report = evaluate(y, p, CLASSES, reader=reads, n_boot=0)
    out = tmp_path / "plots"
    paths = plot_report(report, out)
    assert sorted(x.name for x in paths) == sorted(PLOT_FILES.values())
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert sorted(x.name for x in out.iterdir()) == sorted(PLOT_FILES.values())  # no temp files
    with pytest.raises(FedxrayError, match="exists"):
        plot_report(report, out)
    assert plot_report(report, out, force=True) == paths


def test_no_binary_plot_without_normal_class(tmp_path):
    pytest.importorskip("matplotlib")
    y, p = _case(9, 30)
    paths = plot_report(evaluate(y, p, ["a", "b", "c"], n_boot=0), tmp_path)
    assert PLOT_FILES["binary"] not in {x.name for x in paths}


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    y, p = _case(10, 20)
    report = evaluate(y, p, CLASSES, n_boot=0)
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import` raise ImportError
    with pytest.raises(FedxrayError, match="matplotlib") as e:
        plot_report(report, tmp_path / "plots")
    assert "fedxray[plots]" in e.value.hint
    assert not (tmp_path / "plots").exists()


# ---------------------------------------------------------------- inference


def test_images_to_tensor_scaling():
    x = images_to_tensor(np.array([[[0, 255], [128, 64]]], dtype=np.uint8))
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    assert x[0, 0, 0, 0].item() == pytest.approx(-2.0)
    assert x[0, 0, 0, 1].item() == pytest.approx(2.0)
    assert x[0, 0, 1, 0].item() == pytest.approx((128 / 255 - 0.5) / 0.25, abs=1e-6)
    x16 = images_to_tensor(np.array([[[0, 65535]]], dtype=np.uint16))
    assert x16.flatten().tolist() == pytest.approx([-2.0, 2.0])
    with pytest.raises(FedxrayError, match="uint8 or uint16"):
        images_to_tensor(np.zeros((1, 2, 2), dtype=np.float32))
    with pytest.raises(FedxrayError, match=r"\[N, H, W\]"):
        images_to_tensor(np.zeros((2, 2), dtype=np.uint8))


class _Probe(nn.Module):
    """A tiny classifier that records the mode and grad state it ran under."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled(), x.shape[0]))
        return self.fc(self.drop(x.flatten(1)))


def test_predict_proba_batched_eval_no_grad():
    images = np.random.default_rng(0).integers(0, 256, size=(10, 4, 4), dtype=np.uint8)
    model = _Probe()
    model.train()
    done = []
    probs = predict_proba(model, images, batch_size=4, progress=lambda a, b: done.append((a, b)))
    assert probs.shape == (10, 3) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-6)
    assert [s[2] for s in model.seen] == [4, 4, 2]
    assert all(not training and not grad for training, grad, _ in model.seen)
    assert model.training  # mode restored
    assert done == [(4, 10), (8, 10), (10, 10)]
    # Same as one big batch through the shared input transform, in eval mode.
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(images_to_tensor(images)), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    # Probabilities feed the metrics directly.
    assert compute_metrics(np.zeros(10, dtype=int), probs, CLASSES).values["accuracy"] is not None


def test_predict_proba_checks():
    model = _Probe()
    with pytest.raises(FedxrayError, match="no images"):
        predict_proba(model, np.zeros((0, 4, 4), dtype=np.uint8))
    with pytest.raises(FedxrayError, match="batch size"):
        predict_proba(model, np.zeros((1, 4, 4), dtype=np.uint8), batch_size=0)
    with pytest.raises(FedxrayError, match="model output"):
        predict_proba(nn.Flatten(0), np.zeros((2, 4, 4), dtype=np.uint8))
    if not torch.cuda.is_available():
        with pytest.raises(FedxrayError, match="not available"):
            predict_proba(model, np.zeros((1, 4, 4), dtype=np.uint8), device="cuda")


def test_math_helpers_are_exact_for_small_counts():
    assert binomial_two_sided(0, 0) == 1.0
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert math.isclose(binomial_two_sided(1, 3), 1.0)
