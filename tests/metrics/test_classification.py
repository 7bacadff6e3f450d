import numpy as np
import pytest
import torch

from xtimage.errors import InputError
from xtimage.metrics import ClassificationMeter, confusion_matrix, macro_scores
from xtimage.metrics.classification import topk_correct


def _brute_force(preds, targets, num_classes):
    """Macro P/R/F1 by plain loops over samples (scikit-learn's definitions)."""
    seen = sorted(set(preds) | set(targets))
    p, r, f = [], [], []
    for c in seen:
        tp = sum(1 for a, b in zip(preds, targets, strict=True) if a == c and b == c)
        predicted = sum(1 for a in preds if a == c)
        true = sum(1 for b in targets if b == c)
        prec = tp / predicted if predicted else 0.0
        rec = tp / true if true else 0.0
        p.append(prec)
        r.append(rec)
        f.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return {"precision": np.mean(p), "recall": np.mean(r), "f1": np.mean(f)}


def test_hand_computed_case():
    # targets 0 0 1 1 2, predictions 0 1 1 1 0:
    # class 0: tp 1, predicted 2, true 2 -> P 1/2, R 1/2, F1 1/2
    # class 1: tp 2, predicted 3, true 2 -> P 2/3, R 1,   F1 4/5
    # class 2: tp 0, predicted 0, true 1 -> P 0,   R 0,   F1 0
    targets = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0])
    cm = confusion_matrix(preds, targets, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    scores = macro_scores(cm)
    assert scores["precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert scores["recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert scores["f1"] == pytest.approx((1 / 2 + 4 / 5 + 0) / 3)


@pytest.mark.parametrize("seed", range(5))
def test_meter_matches_brute_force_over_batches(seed):
    rng = np.random.default_rng(seed)
    n, c = 97, 7
    logits = torch.from_numpy(rng.standard_normal((n, c)))
    targets = torch.from_numpy(rng.integers(0, c - 1, n))  # class 6 never a target
    meter = ClassificationMeter(c, topk=(1, 3))
    for chunk in torch.arange(n).split(10):
        meter.update(logits[chunk], targets[chunk])
    got = meter.compute()
    preds = logits.argmax(1).tolist()
    want = _brute_force(preds, targets.tolist(), c)
    for key in want:
        assert got[key] == pytest.approx(want[key])
    order = np.argsort(-logits.numpy(), axis=1)
    for k in (1, 3):
        hits = sum(int(t in order[i, :k]) for i, t in enumerate(targets.tolist()))
        assert got[f"top{k}"] == pytest.approx(hits / n)


def test_topk_beyond_classes_counts_all_and_perfect_scores():
    logits = torch.eye(4)
    assert topk_correct(logits, torch.tensor([3, 2, 1, 0]), 5) == 4
    meter = ClassificationMeter(4)
    meter.update(logits, torch.arange(4))
    assert meter.compute() == {"top1": 1.0, "top5": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_bad_inputs_raise():
    with pytest.raises(InputError, match="target class 5"):
        confusion_matrix(torch.tensor([0]), torch.tensor([5]), 3)
    with pytest.raises(InputError, match="shape"):
        ClassificationMeter(3).update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
