"""Lip-gap and phone losses (training/losses.py) on hand-made tensors."""
import math

import numpy as np
import pytest
import torch

from training import losses as L

# Two "lip" vertices: 0 = upper inner lip, 1 = lower inner lip, plus one still vertex.
UP, LO = torch.tensor([0]), torch.tensor([1])


def face(gaps):
    """[T, 3, 3] frames whose inner-lip gap (upper y minus lower y) is `gaps` (metres)."""
    gaps = torch.as_tensor(gaps, dtype=torch.float32)
    x = torch.zeros(len(gaps), 3, 3)
    x[:, 0, 1] = gaps / 2
    x[:, 1, 1] = -gaps / 2
    return x


def test_lip_gap_and_weights():
    x = face([0.0, 0.004, 0.010])
    assert torch.allclose(L.lip_gap(x, UP, LO), torch.tensor([0.0, 0.004, 0.010]))
    tg = torch.tensor([0.0, -0.5, 1.0, 5.0])  # mm; neutral gap 0
    w = L.gap_weights(tg, 0.0, closure_boost=4.0, closure_scale=1.0)
    assert w[0] == pytest.approx(5.0) and w[1] == pytest.approx(5.0)  # closed or pressed: full boost
    assert w[2] == pytest.approx(1 + 4 / math.e) and w[3] == pytest.approx(1 + 4 * math.exp(-5), rel=1e-5)
    assert torch.allclose(L.gap_weights(tg, 0.0), torch.ones(4))  # no boost: plain squared error
    bil = torch.tensor([False, False, True, False])
    wb = L.gap_weights(tg, 0.0, 4.0, 1.0, bil, bilabial_boost=3.0)
    assert torch.allclose(wb - w, torch.tensor([0.0, 0.0, 3.0, 0.0]))
    # relative to the neutral's gap: a mesh whose rest pose has the lips 10 mm apart
    assert L.gap_weights(tg + 10.0, 10.0, 4.0)[0] == pytest.approx(5.0)


def test_missing_a_closure_costs_more_than_missing_an_open_frame():
    w = L.LossWeights(mse=0.0, gap=1.0, gap_closure_boost=4.0, gap_closure_mm=1.0, unit_scale=1000.0)
    target = face([0.0, 0.008])  # frame 0 closed, frame 1 open by 8 mm
    inputs = L.GapInputs(UP, LO, neutral_gap=0.0)
    miss_closure = face([0.002, 0.008])  # 2 mm too open on the closed frame
    miss_open = face([0.0, 0.006])  # 2 mm too closed on the open frame
    a = L.compute_losses(miss_closure, target, w, gap=inputs)
    b = L.compute_losses(miss_open, target, w, gap=inputs)
    assert a["gap"].item() == pytest.approx(5.0 * 4.0 / 2)  # weight 5, (2 mm)^2, mean over 2 frames
    assert b["gap"].item() == pytest.approx((1 + 4 * math.exp(-8)) * 4.0 / 2, rel=1e-4)
    assert a["total"] > 4 * b["total"]
    # phone-aware: a p/b/m frame costs more still
    bil = L.GapInputs(UP, LO, 0.0, bilabial=torch.tensor([True, False]))
    wb = L.LossWeights(mse=0.0, gap=1.0, gap_closure_boost=4.0, gap_bilabial_boost=2.0, unit_scale=1000.0)
    assert L.compute_losses(miss_closure, target, wb, gap=bil)["gap"].item() == pytest.approx(7.0 * 4.0 / 2)
    # without a boost the two misses cost the same
    plain = L.LossWeights(mse=0.0, gap=1.0, unit_scale=1000.0)
    assert L.compute_losses(miss_closure, target, plain, gap=inputs)["gap"].item() == pytest.approx(
        L.compute_losses(miss_open, target, plain, gap=inputs)["gap"].item())


def test_gap_gradients_flow_and_weight_zero_costs_nothing():
    target = face([0.0, 0.0, 0.006])
    pred = face([0.003, 0.001, 0.006]).requires_grad_(True)
    inputs = L.GapInputs(UP, LO, 0.0)
    out = L.compute_losses(pred, target, L.LossWeights(mse=0.0, gap=1.0, gap_closure_boost=4.0, unit_scale=1000.0),
                           gap=inputs)
    out["total"].backward()
    g = pred.grad
    assert g[0, 0, 1] > 0 and g[0, 1, 1] < 0  # close the lips: upper down, lower up
    assert g[0, 0, 1] > g[1, 0, 1] > 0  # a bigger miss pulls harder
    assert g[2].abs().sum() == 0 and g[:, 2].abs().sum() == 0  # exact frame and still vertex: nothing
    assert g[..., [0, 2]].abs().sum() == 0  # only heights matter
    # reported but not trained when its weight is 0; NaN without inner-lip inputs
    pred2 = face([0.003, 0.001, 0.006]).requires_grad_(True)
    out0 = L.compute_losses(pred2, target, L.LossWeights(mse=0.0, velocity=0.0, unit_scale=1000.0), gap=inputs)
    assert out0["gap"].item() > 0 and out0["total"].item() == 0.0
    assert torch.isnan(L.compute_losses(pred2, target, L.LossWeights())["gap"])


def test_closure_gap_error():
    tg = torch.tensor([0.0, 0.5, 3.0, 0.2])  # mm, neutral 0
    pg = torch.tensor([1.0, 0.5, 0.0, -0.3])
    s, n = L.closure_gap_error(pg, tg, 0.0, closed=1.0)
    assert n == 3 and s == pytest.approx(1.0 + 0.0 + 0.5)


def test_phone_loss_weighs_bilabial_frames():
    """PP frames weigh bilabial_weight times the others, the mean taken over the weights."""
    logits = torch.randn(6, 15, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, L.PP_CLASS, 3, L.PP_CLASS, -1, 10])
    ce = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    known, pp = labels >= 0, labels == L.PP_CLASS
    assert L.phone_loss(logits, labels, 1.0).item() == pytest.approx(ce[known].mean().item())
    expected = (ce[known & ~pp].sum() + 4 * ce[pp].sum()) / (int((known & ~pp).sum()) + 4 * int(pp.sum()))
    assert L.phone_loss(logits, labels, 4.0).item() == pytest.approx(expected.item())
    out = L.compute_losses(torch.zeros(6, 3, 3), torch.zeros(6, 3, 3), L.LossWeights(phone=1.0, phone_bilabial_weight=4.0),
                           phone_logits=logits, phone_labels=labels)
    assert out["phone"].item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="phone_bilabial_weight must be above 0"):
        L.LossWeights(phone_bilabial_weight=0.0)


def test_phone_loss_and_graph_without_labels():
    logits = torch.zeros(4, 15, requires_grad=True)
    labels = torch.tensor([0, 1, -1, 1])
    assert L.phone_loss(logits, labels).item() == pytest.approx(math.log(15))
    good = torch.full((4, 15), -10.0)
    good[torch.arange(4), labels.clamp(min=0)] = 10.0
    assert L.phone_loss(good, labels).item() < 1e-6
    assert L.phone_loss(logits, torch.full((4,), -1)).item() == 0.0  # nothing known: no loss, no NaN
    pred = torch.zeros(4, 3, 3)
    w = L.LossWeights(phone=0.5)
    out = L.compute_losses(pred, pred, w, phone_logits=logits, phone_labels=labels)
    assert out["phone"].item() == pytest.approx(math.log(15))
    assert out["total"].item() == pytest.approx(0.5 * math.log(15))
    out["total"].backward()
    assert logits.grad.abs().sum() > 0
    # a clip without phone timings: reported as NaN, and the head still joins the graph at zero cost
    logits.grad = None
    out = L.compute_losses(pred, pred, w, phone_logits=logits)
    assert torch.isnan(out["phone"]) and out["total"].item() == 0.0
    out["total"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_loss_weights_from_config_default_off():
    from training.config import load_config

    w = L.LossWeights.from_section(load_config(None).loss)
    assert w.gap == 0.0 and w.phone == 0.0 and w.gap_closure_boost == 0.0
    cfg = load_config(None, ["loss.gap=0.5", "loss.gap_closure_boost=4", "loss.phone=1"])
    w = L.LossWeights.from_section(cfg.loss)
    assert (w.gap, w.gap_closure_boost, w.phone) == (0.5, 4.0, 1.0)


def test_inner_lip_gap_matches_lip_geometry():
    """The torch gap the loss uses equals training.lip_geometry.lip_gap on the same vertices."""
    from training.lip_geometry import InnerLip, lip_gap

    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 10, 3))
    v[:, [2, 7], 1] -= 3.0  # the lower lip below the upper
    il = InnerLip(np.array([1, 3, 5]), np.array([2, 7]), "mask_split")
    ours = L.lip_gap(torch.from_numpy(v), torch.from_numpy(il.upper), torch.from_numpy(il.lower))
    assert np.allclose(ours.numpy(), lip_gap(v, il))


def test_lip_closure_term_pulls_every_lip_vertex_on_closed_frames():
    """The closure-weighted lip MSE: the same lip error costs more on a closed frame than on an
    open one, reaches every lip vertex (not only the extreme two), and is 0 when switched off."""
    lips = torch.tensor([0, 1, 2])
    gap = L.GapInputs(UP, LO, 0.0)
    target = face([0.0, 0.008])
    w = L.LossWeights(mse=0.0, lip_closure=1.0, gap_closure_boost=4.0, gap_closure_mm=1.0, unit_scale=1000.0)
    miss_closed, miss_open = target.clone(), target.clone()
    miss_closed[0, 2, 2] += 0.002  # a lip vertex off by 2 mm on the closed frame
    miss_open[1, 2, 2] += 0.002    # ... on the open frame
    c = L.compute_losses(miss_closed, target, w, lips=lips, gap=gap)
    o = L.compute_losses(miss_open, target, w, lips=lips, gap=gap)
    assert float(c["lip_closure"]) > 20 * float(o["lip_closure"]) > 0
    pred = miss_closed.clone().requires_grad_(True)
    L.compute_losses(pred, target, w, lips=lips, gap=gap)["total"].backward()
    assert pred.grad[0, 2].abs().sum() > 0  # the vertex that is not an extreme of the gap
    off = L.compute_losses(miss_closed, target, L.LossWeights(mse=0.0, gap_closure_boost=4.0),
                           lips=lips, gap=gap)
    assert float(off["total"]) == 0.0 and float(off["lip_closure"]) > 0  # reported, not counted


def test_mae_term_pulls_sub_millimetre_drift_as_hard_as_large_lip_errors():
    # 0.5 mm of drift on most of the face, 5 mm of lip error: under MSE a drifting vertex gets a
    # tenth of a lip vertex's gradient, under MAE the same (what keeps far-field motion still).
    target = torch.zeros(4, 100, 3)
    err = torch.full((4, 100, 3), 0.0005)
    err[:, :10] = 0.005
    grads = {}
    for name, w in (("mse", L.LossWeights(mse=1.0, unit_scale=1000.0)),
                    ("mae", L.LossWeights(mse=0.0, mae=1.0, unit_scale=1000.0))):
        pred = (target + err).requires_grad_(True)
        out = L.compute_losses(pred, target, w)
        out["total"].backward()
        g = pred.grad.abs()
        grads[name] = float(g[:, 10:].mean() / g[:, :10].mean())
        if name == "mae":
            assert abs(out["mae"].item() - (0.1 * 5 + 0.9 * 0.5)) < 1e-4  # mean |error| in mm
    assert abs(grads["mse"] - 0.1) < 1e-4 and abs(grads["mae"] - 1.0) < 1e-4
    from training.config import load_config

    w = L.LossWeights.from_section(load_config(None, ["loss.mae=2"]).loss)
    out = L.compute_losses(target + err, target, w)
    assert abs(out["total"].item() - (out["mse"].item() + 2 * out["mae"].item())) < 1e-3
