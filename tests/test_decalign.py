"""DecAlign method: contract runs, every ablation switch, loss wiring and invariances."""

from __future__ import annotations

import ot
import pytest
import torch

from equimodal.config import ModelConfig
from equimodal.data.dataset import MultimodalData
from equimodal.losses.gmm import fit_diag_gmm
from equimodal.losses.ot import bures_w2_diag
from equimodal.losses.supcon import regression_bins, supcon_loss
from equimodal.methods.check import check_method
from equimodal.methods.decalign import (
    DecAlignConfig,
    decoupling_loss,
    prototype_alignment_loss,
)
from equimodal.registry import create_method, load_dataset
from equimodal.types import Batch, ModalitySpec, TaskInfo

MODEL = ModelConfig(hidden=16, layers=1, heads=2)




def _data(task: str = "classification", m: int = 2, seq_len: int = 5) -> MultimodalData:
    data: MultimodalData = load_dataset(
        "synthetic", modalities=[f"m{i}" for i in range(m)], strengths=[1.5] + [0.8] * (m - 1),
        task=task, n_classes=3, dim=6, latent=4, noise=0.5, seq_len=seq_len, n_train=48,
        n_valid=16, n_test=16, seed=3,
    )
    return data


def _batch(data: MultimodalData, n: int = 24) -> Batch:
    return data.train.batch(torch.arange(n))


def _losses(data: MultimodalData, seed: int = 0, **cfg: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    method = create_method("decalign", data.info, MODEL, **cfg)
    batch = _batch(data)
    terms = method.compute_loss(batch, method(batch), None)  # type: ignore[arg-type]
    return {k: v.detach() for k, v in terms.items()}


# ----- contract ----------------------------------------------------------------------------
def test_contract_vectors_classification() -> None:
    report = check_method("decalign", epochs=4)  # the registry-wide test runs 6 epochs
    assert report.score > report.chance + 0.15


def test_contract_sequences() -> None:
    check_method("decalign", epochs=4, sequences=True)


def test_contract_three_modality_regression_on_sequences() -> None:
    report = check_method("decalign", epochs=4, task="regression", n_modalities=3,
                          sequences=True)
    # score = -MAE; chance = -MAE of predicting the mean.
    assert report.score > report.chance + 0.3


def test_contract_with_all_modules_ablated() -> None:
    check_method("decalign", epochs=4, use_mfd=False, use_hete=False, use_homo=False,
                 use_ct=False)


# ----- ablation switches (Tables 3 and 4) --------------------------------------------------
# switch -> loss terms that must vanish when it is off
ABLATIONS = {
    "use_mfd": ("dec",),
    "use_hete": ("ot", "proto", "hete"),
    "use_homo": ("sem", "mmd", "homo"),
    "use_proto_ot": ("ot", "proto", "hete"),
    "use_ct": ("ct",),
    "use_sem": ("sem",),
    "use_mmd": ("mmd",),
}


@pytest.mark.parametrize("switch", sorted(ABLATIONS))
def test_each_ablation_switch_removes_its_terms_only(switch: str) -> None:
    data = _data(seq_len=0)
    full = _losses(data)
    off = _losses(data, **{switch: False})
    for name in ("task", "dec", "ot", "proto", "sem", "mmd", "ct"):
        assert torch.isfinite(full[name]) and float(full[name]) != 0.0, name
        if name in ABLATIONS[switch]:
            assert float(off[name]) == 0.0, (switch, name)
    # Switches that leave the network unchanged leave the untouched terms unchanged.
    if switch not in ("use_mfd", "use_hete"):
        for name in ("task", "dec", "ot", "proto", "sem", "mmd", "ct"):
            if name not in ABLATIONS[switch]:
                assert torch.allclose(full[name], off[name]), (switch, name)
    if switch == "use_homo":  # Sem and MMD are ablated together
        assert float(off["sem"]) == 0.0 and float(off["mmd"]) == 0.0


def test_ct_is_supcon_on_fused_with_binned_regression_labels() -> None:
    data = _data("regression", 3)
    torch.manual_seed(0)
    method = create_method("decalign", data.info, MODEL, ct_score_range=[-1.5, 1.5], ct_bins=5)
    batch = _batch(data)
    out = method(batch)
    assert out.fused is not None
    terms = method.compute_loss(batch, out, None)  # type: ignore[arg-type]
    labels = regression_bins(batch.target, 5, -1.5, 1.5)
    assert torch.allclose(terms["ct"], supcon_loss(out.fused, labels, 0.1))


def test_structural_switches_change_the_network() -> None:
    data = _data()
    full = create_method("decalign", data.info, MODEL)
    no_mfd = create_method("decalign", data.info, MODEL, use_mfd=False)
    no_hete = create_method("decalign", data.info, MODEL, use_hete=False)
    no_ot = create_method("decalign", data.info, MODEL, use_proto_ot=False)
    assert full.model.common is not None and no_mfd.model.common is None
    assert full.model.cross is not None and no_hete.model.cross is None
    assert no_ot.model.cross is not None  # Proto-OT off keeps the transformers
    batch = _batch(data)
    ex = no_mfd(batch).extras
    assert torch.equal(ex["uni_seq"], ex["com_seq"])  # no decoupling: one stream


def test_total_loss_is_eq13_plus_ct_and_probes() -> None:
    data = _data()
    cfg = {"alpha": 0.3, "beta": 0.7, "ct_weight": 0.2, "dec_weight": 1.0}
    t = _losses(data, **cfg)
    expect = (t["task"] + t["dec"] + 0.3 * (t["ot"] + t["proto"]) + 0.7 * (t["sem"] + t["mmd"])
              + 0.2 * t["ct"] + t["uni"])
    assert torch.allclose(t["loss"], expect)
    assert torch.allclose(t["hete"], t["ot"] + t["proto"])
    assert torch.allclose(t["homo"], t["sem"] + t["mmd"])


def test_defaults_follow_the_paper_and_total_is_eq13() -> None:
    """Paper defaults (alpha = beta = 0.05, Sec. 4.3) and Eq. 13 under those defaults."""
    cfg = DecAlignConfig()
    assert (cfg.alpha, cfg.beta, cfg.dec_weight) == (0.05, 0.05, 1.0)
    assert (cfg.em_iters, cfg.var_floor) == (5, 1e-4)
    # Readings that train (see the config docstring): squared cosine, cost-scaled epsilon.
    assert (cfg.dec_similarity, cfg.ot_epsilon, cfg.ot_epsilon_relative) == ("cosine_sq", 0.05,
                                                                            True)
    assert (cfg.sinkhorn_iters, cfg.sinkhorn_tol) == (200, 1e-5)
    assert (cfg.mmd_sigma, cfg.ct_weight, cfg.ct_temperature, cfg.ct_bins) == (1.0, 0.003, 0.1, 7)
    assert all(getattr(cfg, s) for s in ABLATIONS)  # the full model has every module on
    t = _losses(_data("regression", 3))
    expect = (t["task"] + t["dec"] + 0.05 * t["hete"] + 0.05 * t["homo"] + 0.003 * t["ct"]
              + t["uni"])
    assert torch.allclose(t["loss"], expect)


def test_heterogeneity_loss_matches_pot_pipeline_for_two_modalities() -> None:
    """End-to-end Eq. 2-9 for M = 2: GMM on pooled unique features, Bures costs, the plan
    of POT's log-domain Sinkhorn with marginals = mean posteriors (Eq. 8), and Eq. 9."""
    data = _data(seq_len=0)
    torch.manual_seed(0)
    method = create_method("decalign", data.info, MODEL, sinkhorn_iters=3000,
                           ot_epsilon=0.1, ot_epsilon_relative=False, sinkhorn_tol=0.0)
    batch = _batch(data)
    ex = method(batch).extras
    feats, present = ex["uni_pooled"].detach().double(), ex["present"].double()
    got = method.heterogeneity_loss(feats, present)
    k = method.n_prototypes
    gmm = fit_diag_gmm(feats, k, 5, 1e-4, mask=present)
    c = bures_w2_diag(gmm.means[0], gmm.variances[0], gmm.means[1], gmm.variances[1]).numpy()
    a, b = (gmm.resp[i].mean(0).numpy() for i in range(2))
    plan = ot.sinkhorn(a, b, c, 0.1, method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
    assert float(got["ot"]) == pytest.approx(float((plan * c).sum()), rel=1e-6)
    ref_proto = 0.0
    for i, j in ((0, 1), (1, 0)):
        d2 = (feats[i][:, None, :] - gmm.means[j][None]).pow(2).sum(-1)  # [N, K]
        ref_proto += float((gmm.resp[i] * d2).sum(1).mean())
    assert float(got["proto"]) == pytest.approx(ref_proto, rel=1e-8)


def test_ablated_modules_change_the_data_flow() -> None:
    """Hete off: the head reads pooled unique features directly (no cross-modal transformer).
    MFD off: the common stream is the unique one, so L_homo reaches the unique encoders."""
    data = _data()
    batch = _batch(data)
    torch.manual_seed(0)
    no_hete = create_method("decalign", data.info, MODEL, use_hete=False)
    out = no_hete(batch)
    ex = out.extras
    fused = torch.cat([ex["uni_pooled"].transpose(0, 1).flatten(1),
                       ex["com_pooled"].transpose(0, 1).flatten(1)], 1)
    assert out.fused is not None and torch.allclose(out.fused, fused)
    torch.manual_seed(0)
    no_mfd = create_method("decalign", data.info, MODEL, use_mfd=False)
    terms = no_mfd.compute_loss(batch, no_mfd(batch), None)  # type: ignore[arg-type]
    uni_w = [no_mfd.model.unique[n].weight for n in no_mfd.model.names]
    grads = torch.autograd.grad(terms["homo"], uni_w)
    assert all(float(g.abs().sum()) > 0 for g in grads)


def test_alignment_terms_reach_the_right_encoders() -> None:
    """L_hete acts on unique features only, L_homo on common features only, probes on
    their heads only."""
    data = _data()
    torch.manual_seed(0)
    method = create_method("decalign", data.info, MODEL)
    batch = _batch(data)
    terms = method.compute_loss(batch, method(batch), None)  # type: ignore[arg-type]
    net = method.model
    uni_w = [net.unique[n].weight for n in net.names]

    def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[float]:
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [0.0 if g is None else float(g.abs().sum()) for g in gs]

    assert all(g > 0 for g in grads(terms["hete"], uni_w))
    assert grads(terms["hete"], [net.common.weight]) == [0.0]
    assert grads(terms["homo"], [net.common.weight])[0] > 0
    assert grads(terms["homo"], uni_w) == [0.0] * len(uni_w)
    assert grads(terms["homo"], list(net.projector.parameters()))[0] > 0
    assert grads(terms["uni"], uni_w + [net.common.weight]) == [0.0] * (len(uni_w) + 1)
    assert all(g > 0 for g in grads(terms["dec"], uni_w + [net.common.weight]))


# ----- loss pieces -------------------------------------------------------------------------
def test_decoupling_loss_closed_forms() -> None:
    g = torch.Generator().manual_seed(0)
    uni = torch.randn(2, 4, 3, 5, generator=g)
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    present = torch.ones(2, 4)
    assert float(decoupling_loss(uni, uni, mask, present)) == pytest.approx(2.0)  # sum over M
    assert float(decoupling_loss(uni, -uni, mask, present)) == pytest.approx(-2.0)
    assert float(decoupling_loss(uni, -uni, mask, present, "cosine_sq")) == pytest.approx(2.0)
    ortho = torch.zeros(2, 4, 3, 10)
    ortho[..., :5] = uni
    other = torch.zeros(2, 4, 3, 10)
    other[..., 5:] = uni
    assert float(decoupling_loss(ortho, other, mask, present)) == pytest.approx(0.0, abs=1e-7)
    # Padding frames and absent samples do not count.
    noisy = uni.clone()
    mask[:, :, 2] = False
    noisy[:, :, 2] = torch.randn(2, 4, 5, generator=g)
    assert float(decoupling_loss(uni, noisy, mask, present)) == pytest.approx(2.0)
    present[0, :2] = 0
    noisy[0, :2] = -uni[0, :2]
    assert float(decoupling_loss(uni, noisy, mask, present)) == pytest.approx(2.0)


def test_prototype_alignment_loss_matches_loop() -> None:
    g = torch.Generator().manual_seed(1)
    m, n, k, d = 3, 5, 2, 4
    feats, means = torch.randn(m, n, d, generator=g), torch.randn(m, k, d, generator=g)
    resp = torch.softmax(torch.randn(m, n, k, generator=g), -1)
    present = torch.ones(m, n)
    ref = 0.0
    for i in range(m):
        for j in range(m):
            if i != j:
                ref += sum(float(resp[i, s, c] * (feats[i, s] - means[j, c]).pow(2).sum())
                           for s in range(n) for c in range(k)) / n
    got = prototype_alignment_loss(feats, resp, means, present)
    assert float(got) == pytest.approx(ref, rel=1e-5)


def test_prototype_count_defaults_and_small_batches() -> None:
    cls_data, reg_data = _data(), _data("regression", 3)
    assert create_method("decalign", cls_data.info, MODEL).n_prototypes == 3
    assert create_method("decalign", reg_data.info, MODEL).n_prototypes == 7
    method = create_method("decalign", reg_data.info, MODEL, n_prototypes=7)
    batch = reg_data.train.batch(torch.arange(3))  # fewer samples than prototypes
    terms = method.compute_loss(batch, method(batch), None)  # type: ignore[arg-type]
    assert all(torch.isfinite(v) for v in terms.values())
    assert float(terms["ot"].detach()) > 0
    with pytest.raises(ValueError):
        create_method("decalign", reg_data.info, MODEL, n_prototypes=200)  # 200^3 grid


@pytest.mark.parametrize("cfg", [
    {"ot_objective": "entropic"}, {"cost_reduction": "mean"}, {"detach_plan": True},
    {"dec_similarity": "cosine_sq"}, {"mmd_estimator": "unbiased"},
    {"input_projection": "when_needed", "homo_projector": False},
    {"regression_loss": "l1", "unimodal_heads": False},
])
def test_options_give_finite_losses_and_gradients(cfg: dict[str, object]) -> None:
    data = _data("regression", 3)
    torch.manual_seed(0)
    method = create_method("decalign", data.info, ModelConfig(hidden=6, layers=1, heads=2), **cfg)
    batch = _batch(data)
    terms = method.compute_loss(batch, method(batch), None)  # type: ignore[arg-type]
    terms["loss"].backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in method.parameters())
    if cfg.get("unimodal_heads") is False:
        assert method(batch).unimodal_logits == {}


def test_bad_option_is_rejected() -> None:
    with pytest.raises(ValueError, match="ot_objective"):
        create_method("decalign", _data().info, MODEL, ot_objective="nope")
    with pytest.raises(ValueError, match="proj_kernel"):
        create_method("decalign", _data().info, MODEL, proj_kernel=4)


# ----- network invariances -----------------------------------------------------------------
def test_inference_ignores_padding_absent_inputs_and_batch_composition() -> None:
    data = _data(seq_len=6)
    torch.manual_seed(0)
    method = create_method("decalign", data.info, MODEL).eval()
    batch = _batch(data, 12)
    with torch.no_grad():
        ref = method.predict(batch)
        assert set(ref.unimodal_logits) == set(data.info.modality_names)
        # Values in padding frames are ignored.
        name = data.info.modality_names[0]
        lengths = batch.lengths[name]
        x = batch.inputs[name].clone()
        pad = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
        x[pad] = 7.0
        padded = Batch({**batch.inputs, name: x}, batch.target, batch.present, batch.lengths)
        assert torch.allclose(method.predict(padded).logits, ref.logits, atol=1e-5)
        # An absent modality's (garbage) values are ignored.
        only = batch.with_modalities([name])
        other = data.info.modality_names[1]
        junk = Batch({**only.inputs, other: torch.randn_like(only.inputs[other])}, only.target,
                     only.present, only.lengths)
        assert torch.allclose(method.predict(only).logits, method.predict(junk).logits, atol=1e-5)
        assert torch.isfinite(method.predict(only).logits).all()
        # No batch statistics at inference: a sample's prediction ignores its batch mates.
        sub = data.train.batch(torch.arange(3, 7))
        assert torch.allclose(method.predict(sub).logits, ref.logits[3:7], atol=1e-5)


def test_mixed_vector_and_sequence_modalities() -> None:
    info = TaskInfo("classification", 3, {"v": ModalitySpec("v", 5),
                                           "s": ModalitySpec("s", 3, seq_len=4)})
    torch.manual_seed(0)
    method = create_method("decalign", info, MODEL)
    b = 10
    batch = Batch({"v": torch.randn(b, 5), "s": torch.randn(b, 4, 3)}, torch.arange(b) % 3,
                  {"v": torch.ones(b, dtype=torch.bool), "s": torch.ones(b, dtype=torch.bool)},
                  {"s": torch.full((b,), 4)})
    out = method(batch)
    assert out.logits.shape == (b, 3) and out.fused is not None
    assert out.fused.shape == (b, 2 * 2 * 16)
    terms = method.compute_loss(batch, out, None)  # type: ignore[arg-type]
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])


def test_training_reduces_alignment_losses() -> None:
    """A few steps on L_hete alone lower it (the EM/OT/prototype pipeline is trainable)."""
    data = _data("regression", 3)
    torch.manual_seed(0)
    method = create_method("decalign", data.info, MODEL)
    batch = _batch(data, 32)
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    values = []
    for _ in range(10):
        terms = method.compute_loss(batch, method(batch), None)  # type: ignore[arg-type]
        values.append(float((terms["hete"] + terms["homo"]).detach()))
        opt.zero_grad()
        (terms["hete"] + terms["homo"]).backward()
        opt.step()
    assert values[-1] < 0.5 * values[0]
