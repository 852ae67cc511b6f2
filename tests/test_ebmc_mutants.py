"""EBMC sign and direction checks: each test recomputes one term of the objective from its
equation with plain tensor algebra (no library helper), so a swapped argument, a flipped
sign or a wrong positive in the implementation makes it fail (issue 18's mutants)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from equimodal.config import ModelConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import seed_everything
from equimodal.losses.distill import categorical_kl
from equimodal.methods.base import Stage
from equimodal.methods.ebmc import EBMC, STAGE2
from equimodal.registry import create_method, load_dataset
from equimodal.types import Batch, ModelOutput

SMALL: dict[str, Any] = {"n_classes": 3, "dim": 8, "latent": 4, "noise": 0.5,
                         "strengths": [1.5, 1.0], "n_train": 64, "n_valid": 16, "n_test": 16}
MODEL = ModelConfig(hidden=16, layers=1)


@pytest.fixture(scope="module")
def data() -> MultimodalData:
    d: MultimodalData = load_dataset("synthetic", seed=0, **SMALL)
    return d


def _method(data: MultimodalData, **cfg: Any) -> EBMC:
    seed_everything(0)
    m: EBMC = create_method("ebmc", data.info, MODEL, **cfg)
    # A teacher that differs from the student (another initialisation), so KL(s || t) and
    # KL(t || s) differ.
    seed_everything(1)
    other: EBMC = create_method("ebmc", data.info, MODEL, **cfg)
    m.teacher.copy_from(other.net)
    m.train()
    return m


def _forward(m: EBMC, data: MultimodalData) -> tuple[Batch, ModelOutput, dict[str, Any]]:
    batch = data.train.batch(torch.arange(24))
    torch.manual_seed(3)
    out = m(batch)
    return batch, out, {}


def test_kl_helper_is_kl_of_first_from_second() -> None:
    p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    ps, qs = p.softmax(-1), q.softmax(-1)
    want = (ps * (ps.log() - qs.log())).sum(-1)
    assert torch.allclose(categorical_kl(p, q), want)
    assert not torch.allclose(categorical_kl(q, p), want, atol=1e-3)


def test_imtd_is_kl_from_student_to_teacher(data: MultimodalData) -> None:
    """Eq. 16: sum_m alpha_m KL(softmax(z_fusion / tau) || softmax(z_T_m / tau))."""
    m = _method(data, tau=2.0, teacher_calibration="none")
    batch, out, parts = _forward(m, data)
    teacher = m._teacher_outputs(batch)
    names = data.info.modality_names
    present = torch.stack([batch.present[n] for n in names], 1)
    alpha = m._trust(teacher, present)
    s = F.softmax(out.logits / 2.0, -1)
    want = torch.zeros(())
    for j, n in enumerate(names):
        t = F.softmax(teacher[n] / 2.0, -1)
        want = want + (alpha[:, j] * (s * (s.log() - t.log())).sum(-1)).mean()
    got = m._imtd_loss(batch, out, teacher, parts)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    reverse = torch.zeros(())
    for j, n in enumerate(names):
        t = F.softmax(teacher[n] / 2.0, -1)
        reverse = reverse + (alpha[:, j] * (t * (t.log() - s.log())).sum(-1)).mean()
    # The check can tell the two directions apart.
    assert abs(float(want.detach()) - float(reverse.detach())) > 1e-3


def test_cce_task_term_uses_the_enhanced_feature(data: MultimodalData) -> None:
    """Eq. 7: ||z~_m - z_m||^2 + gamma l(f(z~_m, z_-m), y), averaged over modalities."""
    m = _method(data, cce_gamma=5.0)
    batch, out, parts = _forward(m, data)
    names = data.info.modality_names
    want = torch.zeros(())
    for n in names:
        zt, z = out.extras[f"zt/{n}"], out.features[n]
        rec = (zt - z).pow(2).mean(1).mean()  # sq_norm_reduction="mean", all present
        feats = {k: (zt if k == n else out.features[k]) for k in names}
        swapped = m.net.backbone.fuse(batch, feats).logits
        want = want + rec + 5.0 * F.cross_entropy(swapped, batch.target)
    got = m._cce_loss(batch, out, parts)
    assert float(got.detach()) == pytest.approx(float(want.detach()) / len(names), rel=1e-5)
    # The task term must reach the enhancer through f (it does not on unswapped logits).
    enh = m.net.enhancer
    assert enh is not None
    task_only = sum(F.cross_entropy(m.net.backbone.fuse(
        batch, {k: (out.extras[f"zt/{n}"] if k == n else out.features[k]) for k in names}
    ).logits, batch.target) for n in names)
    grads = torch.autograd.grad(task_only, list(enh.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_msd_dis_is_positive_cosine_and_enters_with_plus(data: MultimodalData) -> None:
    """Eq. 3 / 5: L_dis = mean over samples of cos(z_i^s, z_j^s), summed over ordered pairs
    i != j, and L_MSD = L_inv + lambda1 L_dis + lambda2 L_uni."""
    m = _method(data, lambda1=0.7)
    batch, out, _ = _forward(m, data)
    names = data.info.modality_names
    zs = [F.normalize(out.extras[f"zs/{n}"], dim=-1) for n in names]
    want = sum(float((zs[i] * zs[j]).sum(1).mean().detach())
               for i in range(len(names)) for j in range(len(names)) if i != j)
    ctx: Any = SimpleNamespace(stage=Stage(STAGE2))
    torch.manual_seed(3)
    parts = m.compute_loss(batch, m(batch), ctx)
    assert float(parts["msd/dis"]) == pytest.approx(want, rel=1e-5)
    msd = parts["msd/inv"] + 0.7 * parts["msd/dis"] + m.cfg.lambda2 * parts["msd/uni"]
    assert float(parts["msd"]) == pytest.approx(float(msd), rel=1e-5)
    # Minimising L_MSD lowers the specific parts' cosine (descent on +L_dis).
    uni = {n: F.cross_entropy(out.extras[f"t/{n}"], batch.target, reduction="none")
           for n in names}
    loss = m._msd_loss(batch, out, uni, {})
    g = torch.autograd.grad(loss, out.extras[f"zs/{names[0]}"])[0]
    step = out.extras[f"zs/{names[0]}"] - 1e-2 * g
    own = F.normalize(out.extras[f"zs/{names[0]}"], dim=-1)
    before = float((own * zs[1]).sum(1).mean().detach())
    after = float((F.normalize(step, dim=-1) * zs[1]).sum(1).mean().detach())
    assert after < before


def test_msd_inv_positive_is_the_aggregated_shared_anchor(data: MultimodalData) -> None:
    """Eq. 2: -log exp(cos(z_i^c, z_agg,i^c) / tau) / sum_k exp(cos(z_i^c, z_agg,k^c) / tau),
    with z_agg the mean shared part over modalities, averaged over modalities."""
    m = _method(data)
    batch, out, _ = _forward(m, data)
    names, tau = data.info.modality_names, m.cfg.nce_temperature
    zc = [out.extras[f"zc/{n}"] for n in names]
    agg = F.normalize(torch.stack(zc).mean(0), dim=-1)
    want = 0.0
    for z in zc:
        logits = F.normalize(z, dim=-1) @ agg.t() / tau
        want += float(-(logits.diagonal() - logits.logsumexp(1)).mean().detach())
    want /= len(names)
    ctx: Any = SimpleNamespace(stage=Stage(STAGE2))
    torch.manual_seed(3)
    parts = m.compute_loss(batch, m(batch), ctx)
    assert float(parts["msd/inv"]) == pytest.approx(want, rel=1e-5)
