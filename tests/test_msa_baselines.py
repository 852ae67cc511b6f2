"""MSA baselines (MulT, MISA, Self-MM, DMD) and the MSA protocol preset: mechanisms, closed
forms, training on built-in sequence data and on an MMSA-format pickle."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import fit
from equimodal.methods.dmd import GraphDistillationUnit, edge_pairs, margin_loss
from equimodal.methods.misa import cmd, soft_orthogonality
from equimodal.methods.selfmm import SelfMM, generate_label, momentum_update, relative_distance
from equimodal.models.crossmodal import MulTStreams, last_valid
from equimodal.presets import MSA_METRICS, MSA_SEEDS, msa_preset
from equimodal.registry import METHODS, create_method, load_dataset
from equimodal.types import Batch, ModalitySpec, TaskInfo, TaskKind
from fixtures_formats import write_mmsa

MSA = ("mult", "misa", "selfmm", "dmd")
MODEL = ModelConfig(hidden=16, layers=1, heads=2)




def _seq_data(task: str = "regression", n_train: int = 96, seed: int = 0) -> MultimodalData:
    data: MultimodalData = load_dataset(
        "synthetic", modalities=["text", "audio", "vision"], strengths=[1.5, 1.0, 0.8],
        task=task, n_classes=3, dim=[8, 5, 6], latent=4, noise=0.5, seq_len=6,
        n_train=n_train, n_valid=32, n_test=48, seed=seed)
    return data


# ----- registry / docs ---------------------------------------------------------------------
@pytest.mark.parametrize("name", MSA)
def test_registered_with_paper_family_and_documented_fields(name: str) -> None:
    cls = METHODS.get(name)
    assert cls.paper and cls.family in ("fusion", "objective")
    assert set(cls.capabilities.tasks) == {"regression", "classification"}
    doc = cls.Config.__doc__ or ""
    for f in dataclasses.fields(cls.Config):
        assert f"{f.name}:" in doc, f"{name}.{f.name} has no docstring line"


@pytest.mark.parametrize("name", MSA)
def test_rejects_unknown_primary_and_bad_choices(name: str) -> None:
    info = _seq_data().info
    with pytest.raises(KeyError):
        create_method(name, info, MODEL, primary="nope")
    with pytest.raises(ValueError):
        create_method(name, info, MODEL, regression_loss="huber")


# ----- MulT --------------------------------------------------------------------------------
def _two_modality_batch(t_a: int = 5, t_b: int = 7, b: int = 4) -> tuple[TaskInfo, Batch]:
    info = TaskInfo("regression", 1, {"a": ModalitySpec("a", 4, t_a),
                                      "b": ModalitySpec("b", 3, t_b),
                                      "c": ModalitySpec("c", 2, 6)})
    g = torch.Generator().manual_seed(0)
    inputs = {n: torch.randn(b, s.seq_len or 1, s.dim, generator=g)
              for n, s in info.modalities.items()}
    lengths = {"a": torch.tensor([5, 3, 4, 2]), "b": torch.tensor([7, 2, 5, 4]),
               "c": torch.tensor([6, 6, 3, 1])}
    present = {n: torch.ones(b, dtype=torch.bool) for n in info.modalities}
    return info, Batch(inputs, torch.zeros(b), present, lengths)


def _streams_and_inputs(batch: Batch) -> tuple[MulTStreams, dict[str, torch.Tensor],
                                                dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    streams = MulTStreams(["a", "b", "c"], dim=8, heads=2, layers=2, mem_layers=1).eval()
    proj = {n: torch.nn.functional.pad(x, (0, 8 - x.shape[-1])) for n, x in batch.inputs.items()}
    masks = {n: torch.arange(x.shape[1])[None] < batch.lengths[n][:, None]
             for n, x in batch.inputs.items()}
    return streams, proj, masks


def test_mult_cross_attention_ignores_padded_key_frames() -> None:
    _, batch = _two_modality_batch()
    streams, seqs, masks = _streams_and_inputs(batch)
    with torch.no_grad():
        ref = streams.stream("b", "a", seqs, masks)
        noisy = dict(seqs)
        noisy["b"] = torch.where(masks["b"][..., None], seqs["b"], 100.0)  # padding only
        out = streams.stream("b", "a", noisy, masks)
        valid = dict(seqs)
        valid["b"] = seqs["b"].clone()
        valid["b"][:, 0] += torch.randn(4, 8)  # a valid key frame (every length >= 1)
        moved = streams.stream("b", "a", valid, masks)
    q = masks["a"]
    assert torch.allclose(ref[q], out[q], atol=1e-5)
    assert not torch.allclose(ref[q], moved[q], atol=1e-3)


def test_mult_streams_are_directional_and_source_specific() -> None:
    _, batch = _two_modality_batch()
    streams, seqs, masks = _streams_and_inputs(batch)
    assert sorted(streams.cross) == sorted(
        f"{s}->{t}" for s in "abc" for t in "abc" if s != t)
    ab, ba = streams.cross["a->b"], streams.cross["b->a"]
    assert not {id(p) for p in ab.parameters()} & {id(p) for p in ba.parameters()}
    with torch.no_grad():
        a_from_b = streams.stream("b", "a", seqs, masks)
        b_from_a = streams.stream("a", "b", seqs, masks)
        assert a_from_b.shape == (4, 5, 8) and b_from_a.shape == (4, 7, 8)  # target length
        other = dict(seqs)
        other["c"] = seqs["c"] + torch.randn_like(seqs["c"])
        assert torch.equal(streams.stream("b", "a", other, masks), a_from_b)  # c unused
        assert not torch.allclose(streams.stream("c", "a", other, masks),
                                  streams.stream("c", "a", seqs, masks))


def test_last_valid_picks_the_last_frame_within_length() -> None:
    h = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert last_valid(h, mask).reshape(-1).tolist() == [2.0, 4.0]


def test_mult_prediction_ignores_missing_modality_content() -> None:
    data = _seq_data()
    torch.manual_seed(0)
    method = create_method("mult", data.info, MODEL).eval()
    batch = data.test.batch(torch.arange(8)).with_modalities(["text", "audio"])
    other = Batch({**batch.inputs, "vision": torch.randn_like(batch.inputs["vision"])},
                  batch.target, batch.present, batch.lengths)
    with torch.no_grad():
        assert torch.allclose(method(batch).logits, method(other).logits, atol=1e-5)


# ----- MISA --------------------------------------------------------------------------------
def _cmd_numpy(x: np.ndarray, y: np.ndarray, k: int) -> float:
    mx, my = x.mean(0), y.mean(0)
    out = float(np.linalg.norm(mx - my))
    for j in range(2, k + 1):
        out += float(np.linalg.norm(((x - mx) ** j).mean(0) - ((y - my) ** j).mean(0)))
    return out


def test_misa_cmd_matches_numpy_and_closed_forms() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(50, 6)), rng.beta(2.0, 5.0, size=(40, 6))
    got = float(cmd(torch.tensor(x), torch.tensor(y), 5))
    assert math.isclose(got, _cmd_numpy(x, y, 5), rel_tol=1e-9)
    # A shift changes only the first moment: CMD = ||c||.
    c = np.array([0.1, -0.2, 0.0, 0.3, 0.05, 0.0])
    assert math.isclose(float(cmd(torch.tensor(x), torch.tensor(x + c), 5)),
                        float(np.linalg.norm(c)), rel_tol=1e-9)
    # Mirroring (x -> 1 - x) keeps even central moments and flips odd ones.
    xt = torch.tensor(x)
    expected = sum(2 * np.linalg.norm(((x - x.mean(0)) ** k).mean(0)) for k in (3, 5))
    expected += np.linalg.norm(2 * x.mean(0) - 1)
    assert math.isclose(float(cmd(xt, 1 - xt, 5)), expected, rel_tol=1e-9)


def test_misa_soft_orthogonality_matches_reference_form() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=(20, 4))

    def ref(u: np.ndarray, v: np.ndarray) -> float:
        u, v = u - u.mean(0), v - v.mean(0)
        u = u / (np.linalg.norm(u, axis=1, keepdims=True) + 1e-6)
        v = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)
        return float(((u.T @ v) ** 2).mean())

    assert math.isclose(float(soft_orthogonality(torch.tensor(a), torch.tensor(b))), ref(a, b),
                        rel_tol=1e-9)
    same = float(soft_orthogonality(torch.tensor(a), torch.tensor(a)))
    assert same > float(soft_orthogonality(torch.tensor(a), torch.tensor(b)))


def test_misa_total_loss_is_the_weighted_sum_eq3() -> None:
    data = _seq_data()
    torch.manual_seed(0)
    method = create_method("misa", data.info, MODEL, sim_weight=0.7, diff_weight=0.2,
                           recon_weight=0.5)
    batch = data.train.batch(torch.arange(24))
    t = method.compute_loss(batch, method(batch), None)
    assert all(float(t[k].detach()) > 0 for k in ("task", "sim", "diff", "recon"))
    expected = t["task"] + 0.7 * t["sim"] + 0.2 * t["diff"] + 0.5 * t["recon"]
    assert torch.allclose(t["loss"], expected)
    ex = method(batch).extras
    pairs = [cmd(ex["shared"][i], ex["shared"][j], 5) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert torch.allclose(method.similarity_loss(ex["shared"], ex["present"]),
                          torch.stack(pairs).mean())


# ----- Self-MM -----------------------------------------------------------------------------
def test_selfmm_label_rule_closed_form_and_momentum() -> None:
    y_m, a_s, a_m = torch.tensor([1.5]), torch.tensor([0.6]), torch.tensor([0.3])
    expected = 0.5 * 1.5 * 0.6 / 0.3 + 0.5 * (1.5 + 0.6 - 0.3)
    assert math.isclose(float(generate_label(y_m, a_s, a_m, 3.0, eps=0.0)), expected,
                        rel_tol=1e-6)
    assert float(generate_label(torch.tensor([2.5]), a_s * 10, a_m, 3.0)) == 3.0  # clipped
    new = momentum_update(torch.tensor([1.0]), torch.tensor([4.0]), epoch=2)
    assert math.isclose(float(new), 1 / 3 + 8 / 3, rel_tol=1e-6)
    f = torch.tensor([[1.0, 0.0]])
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])
    assert math.isclose(float(relative_distance(f, pos, neg)), (3.0 - 1.0) / 1.0, rel_tol=1e-6)


def _selfmm_with_banks(task: TaskKind = "regression") -> tuple[SelfMM, torch.Tensor]:
    info = TaskInfo(task, 1 if task == "regression" else 3,
                    {"x": ModalitySpec("x", 2), "y": ModalitySpec("y", 2)})
    torch.manual_seed(0)
    method: SelfMM = create_method("selfmm", info, MODEL, post_fusion_dim=2,
                                   post_unimodal_dim=2)
    target = torch.tensor([1.0, 1.0, -1.0, -1.0]) if task == "regression" else (
        torch.tensor([0, 0, 1, 2]))
    method.init_banks(target)
    return method, target


def test_selfmm_labels_move_toward_the_nearer_class_centre() -> None:
    method, target = _selfmm_with_banks()
    # Centres: positive samples at +e1, negative at -e1 in every space.
    method.bank_fused = torch.tensor([[1.0, 0], [1.0, 0], [-1.0, 0], [-1.0, 0]])
    method.bank_uni = method.bank_fused.expand(2, -1, -1).clone()
    method.update_centres()
    assert torch.allclose(method.centres_fused, torch.tensor([[-1.0, 0], [1.0, 0]]))
    idx = torch.tensor([0, 2])
    f_fused = torch.tensor([[0.5, 0.0], [-0.5, 0.0]])  # the fused view is unsure
    f_uni = {"x": torch.tensor([[0.9, 0.0], [-0.9, 0.0]]),  # x agrees more with the label
             "y": torch.tensor([[-0.5, 0.0], [0.5, 0.0]])}  # y points the other way
    present = {"x": torch.ones(2, dtype=torch.bool), "y": torch.ones(2, dtype=torch.bool)}
    method.update_labels(idx, f_fused, f_uni, present, epoch=2)
    lab = method.labels[:, idx]
    assert float(lab[0, 0]) > 1.0 and float(lab[0, 1]) < -1.0  # x: stronger sentiment
    assert float(lab[1, 0]) < 1.0 and float(lab[1, 1]) > -1.0  # y: pulled across zero
    # Exact value: momentum at epoch 2 of the closed-form rule.
    a_m = relative_distance(f_fused[:1], torch.tensor([1.0, 0]), torch.tensor([-1.0, 0]))
    a_s = relative_distance(f_uni["x"][:1], torch.tensor([1.0, 0]), torch.tensor([-1.0, 0]))
    new = generate_label(torch.tensor([1.0]), a_s, a_m, 3.0)
    assert torch.allclose(lab[0, 0], momentum_update(torch.tensor(1.0), new[0], 2))
    # Loss weights are tanh(|y_s - y_m|): zero where the labels still agree.
    batch = Batch({"x": torch.zeros(4, 2), "y": torch.zeros(4, 2)}, target,
                  {"x": torch.ones(4, dtype=torch.bool), "y": torch.ones(4, dtype=torch.bool)},
                  index=torch.arange(4))
    labels, weights = method.unimodal_targets(batch)
    assert torch.allclose(weights, torch.tanh((labels - target).abs()))
    assert float(weights[0, 1]) == 0.0 and float(weights[0, 0]) > 0.5


def test_selfmm_classification_scores_and_state_round_trip() -> None:
    method, target = _selfmm_with_banks("classification")
    method.bank_fused = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [-1.0, -1.0]])
    method.bank_uni = method.bank_fused.expand(2, -1, -1).clone()
    method.update_centres()  # class 0 at (1, 0); its one-vs-rest negative at (-0.5, 0)
    both = {"x": torch.ones(1, dtype=torch.bool), "y": torch.ones(1, dtype=torch.bool)}
    f_fused = torch.tensor([[0.8, 0.0]])  # alpha_m = (1.3 - 0.2) / 0.2 = 5.5
    f_uni = {"x": torch.tensor([[1.0, 0.0]]),  # on its class centre: full agreement
             "y": torch.tensor([[-1.0, -1.0]])}  # nearer the other classes
    method.update_labels(torch.tensor([0]), f_fused, f_uni, both, epoch=3)
    assert float(method.labels[0, 0]) == 1.0  # clipped at +1, momentum keeps 1
    assert float(method.labels[1, 0]) == 0.0  # new -1 (clipped): 0.5 * 1 + 0.5 * (-1)
    absent = {"x": torch.ones(1, dtype=torch.bool), "y": torch.zeros(1, dtype=torch.bool)}
    method.update_labels(torch.tensor([0]), f_fused, f_uni, absent, epoch=4)
    assert float(method.labels[1, 0]) == 0.0  # absent modality: label untouched
    batch = Batch({"x": torch.zeros(1, 2), "y": torch.zeros(1, 2)}, target[:1], both,
                  index=torch.tensor([0]))
    _, weights = method.unimodal_targets(batch)
    assert torch.allclose(weights[:, 0], torch.tanh(torch.tensor([0.0, 1.0])))
    twin, _ = _selfmm_with_banks("classification")
    fresh = create_method("selfmm", twin.info, MODEL, post_fusion_dim=2, post_unimodal_dim=2)
    fresh.load_state_dict(method.state_dict())  # banks are resized to the stored split
    assert torch.equal(fresh.labels, method.labels)


def test_selfmm_generated_labels_drift_more_for_a_noise_modality() -> None:
    data: MultimodalData = load_dataset(
        "synthetic", modalities=["t", "noise"], strengths=[1.5, 0.0], task="regression",
        dim=6, latent=4, noise=0.5, n_train=160, n_valid=32, n_test=32, seed=2)
    torch.manual_seed(0)
    res = fit(RunConfig("selfmm", "synthetic", model=MODEL, train=TrainConfig(
        epochs=6, batch_size=32, lr=3e-3, progress=False, device="cpu")), data=data)
    last = res.history[-1]
    assert last["train/label_gap/noise"] > last["train/label_gap/t"] > 0


# ----- DMD ---------------------------------------------------------------------------------
def test_dmd_edges_are_softmax_normalised_with_the_reference_prior() -> None:
    torch.manual_seed(0)
    logits, reprs = torch.randn(3, 5, 1), torch.randn(3, 5, 4)
    unit = GraphDistillationUnit(3, 1, 4, gd_size=8, alpha=0.125, primary=0)
    edges = unit(logits, reprs)
    assert edges.shape == (6, 5) and bool((edges > 0).all())
    assert torch.allclose(edges.sum(0), torch.ones(5))
    ref = np.exp(np.array([0, 0, 1, 0, 1, 0]) / 0.25)
    assert np.allclose(unit.prior.numpy(), ref / ref.sum(), atol=1e-6)
    assert edge_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    inc = GraphDistillationUnit(3, 1, 4, 8, 0.125, edge_norm="incoming")(logits, reprs)
    assert torch.allclose(inc.reshape(3, 2, 5).sum(1), torch.ones(3, 5))


def test_dmd_distillation_flows_from_teacher_to_student() -> None:
    unit = GraphDistillationUnit(3, 2, 4, 8, 0.125, primary=0)
    unit.prior = torch.zeros(6)
    logits = torch.randn(3, 5, 2, requires_grad=True)
    edges = torch.zeros(6, 5)
    edges[2] = 1.0  # the edge (student 1 <- teacher 0) only
    loss = unit.distill(logits, logits, edges, torch.ones(3, 5))
    loss.backward()
    assert logits.grad is not None
    assert float(logits.grad[0].abs().sum()) == 0.0 and float(logits.grad[2].abs().sum()) == 0.0
    expected = torch.sign(logits[1] - logits[0]).detach() / 5
    assert torch.allclose(logits.grad[1], expected)
    with torch.no_grad():
        assert math.isclose(float(loss), float((logits[1] - logits[0]).abs().sum(-1).mean()),
                            rel_tol=1e-6)


def _hinge_reference(feats: torch.Tensor, ids: torch.Tensor, scale: float) -> float:
    # The reference HingeLoss loops, transcribed.
    n = feats.shape[0]
    cos = torch.nn.functional.cosine_similarity(feats[:, None], feats[None], dim=-1)
    total, count = 0.0, 0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        sim = [j for j in others if ids[j] == ids[i]]
        dif = [j for j in others if ids[j] != ids[i]]
        if not sim or not dif:
            continue
        vals = [max(0.0, scale * abs(float(ids[i] - ids[k])) - float(cos[i, p]) + float(cos[i, k]))
                for p in sim for k in dif]
        total += sum(vals) / len(vals)
        count += 1
    return total / max(count, 1)


def test_dmd_margin_loss_matches_the_reference_loops() -> None:
    torch.manual_seed(1)
    feats = torch.randn(12, 5)
    ids = torch.tensor([0.4, 0.4, 0.4, -1.2, -1.2, -1.2, 2.0, 2.0, 2.0, 0.4, 0.4, 0.4])
    got = float(margin_loss(feats, ids, 0.15, chunk=5))
    assert math.isclose(got, _hinge_reference(feats, ids, 0.15), rel_tol=1e-5)


def test_dmd_ablations_remove_their_terms() -> None:
    data = _seq_data()
    batch = data.train.batch(torch.arange(16))
    torch.manual_seed(0)
    full = create_method("dmd", data.info, MODEL)
    with torch.no_grad():
        terms = full.compute_loss(batch, full(batch), None)
    for k in ("dec", "homo_gd", "hetero_gd", "mar", "ort", "rec", "cyc"):
        assert torch.isfinite(terms[k]) and float(terms[k]) > 0, k
    torch.manual_seed(0)
    off = create_method("dmd", data.info, MODEL, use_decoupling=False, use_homo_gd=False,
                        use_hetero_gd=False)
    with torch.no_grad():
        t_off = off.compute_loss(batch, off(batch), None)
    assert not {"dec", "homo_gd", "hetero_gd"} & set(t_off)
    assert torch.allclose(t_off["loss"], t_off["task"] + t_off["task_c"] + t_off["task_uni"])


# ----- training on built-in sequences and on an MMSA pickle ---------------------------------
@pytest.mark.parametrize("name", MSA)
def test_trains_on_three_modality_sequence_regression(name: str) -> None:
    data = _seq_data()
    preset = msa_preset("synthetic", seeds=[1111], epochs=6, patience=0)
    cfg = preset.run_configs(preset.apply(RunConfig(
        name, model=MODEL, train=TrainConfig(batch_size=32, lr=3e-3, progress=False,
                                             device="cpu"))))[0]
    res = fit(cfg, data=data)
    chance = float((data.test.target - data.train.target.mean()).abs().mean())
    assert res.test["mae"] < chance - 0.1, (res.test["mae"], chance)
    assert set(MSA_METRICS) <= set(res.test) and res.test["corr"] > 0.3


@pytest.fixture(scope="module")
def mmsa_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mmsa(tmp_path_factory.mktemp("msa") / "MOSI" / "unaligned_50.pkl",
                      aligned=False, sizes=(24, 8, 8))


@pytest.mark.parametrize("name", MSA)
def test_trains_on_an_mmsa_pickle_with_the_preset(name: str, mmsa_path: Path) -> None:
    preset = msa_preset("mosi", select="f1", seeds=[1111, 1112], epochs=2)
    base = preset.apply(RunConfig(name, data={"path": str(mmsa_path)}, model=MODEL,
                                  train=TrainConfig(batch_size=8, progress=False, device="cpu")))
    assert base.dataset == "mmsa" and base.train.select_metric == "f1_non0"
    cfg = preset.run_configs(base)[0]
    res = fit(cfg)
    assert res.method.info.modality_names == ["text", "audio", "vision"]
    assert all(math.isfinite(res.test[m]) for m in preset.metrics)
    losses = [h["train/loss"] for h in res.history]
    assert all(math.isfinite(v) for v in losses)


# ----- preset ------------------------------------------------------------------------------
def test_msa_preset_fields_and_overrides() -> None:
    p = msa_preset("MOSI")
    assert p.dataset == "mmsa" and p.data == {"name": "mosi", "task": "regression"}
    assert p.train == {"select_metric": "mae", "patience": 8, "epochs": 40}
    assert p.seeds == MSA_SEEDS == (1111, 1112, 1113, 1114, 1115)
    assert {"acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7", "mae", "corr"} == set(
        p.metrics)
    assert msa_preset("mosei", select="f1").train["select_metric"] == "f1_non0"
    assert msa_preset("mosi", select="f1_has0").train["select_metric"] == "f1_has0"
    assert "acc7" not in msa_preset("sims").metrics and msa_preset("sims").score_range == 1.0
    with pytest.raises(KeyError):
        msa_preset("mosi", select="accuracy")
    cfg = p.apply(RunConfig("mult", "synthetic", data={"path": "x.pkl"}))
    assert cfg.dataset == "mmsa" and cfg.data == {"path": "x.pkl", "name": "mosi",
                                                  "task": "regression"}
    assert cfg.train.select_metric == "mae" and cfg.train.patience == 8
    assert [c.train.seed for c in p.run_configs(cfg)] == list(MSA_SEEDS)
    assert p.cli().startswith("--data mmsa --set data.name=mosi")
    assert "--set train.select_metric=mae" in p.cli()


def test_msa_preset_summary_is_mean_and_sample_std() -> None:
    p = msa_preset("synthetic", seeds=[1, 2, 3])
    runs = [dict.fromkeys(p.metrics, v) for v in (0.5, 0.7, 0.9)]
    summary = p.summarise(runs)
    assert all(math.isclose(m, 0.7) and math.isclose(s, 0.2) for m, s in summary.values())
    row = p.format_row("x", runs)
    assert "acc7=70.00+-20.00" in row and "mae=0.7000+-0.2000" in row
