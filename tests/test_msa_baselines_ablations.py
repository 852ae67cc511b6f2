"""MSA baselines: ablation switches (MulT ``targets``, Self-MM ``unimodal_tasks``), the DMD
final gate, classification heads on 3-modality sequences and the preset's command line."""

from __future__ import annotations

import pytest
import torch

from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import fit
from equimodal.presets import MSA_SEEDS
from equimodal.registry import create_method, load_dataset

MODEL = ModelConfig(hidden=16, layers=1, heads=2)




def _seq_data(task: str = "regression", n_train: int = 96, seed: int = 0) -> MultimodalData:
    data: MultimodalData = load_dataset(
        "synthetic", modalities=["text", "audio", "vision"], strengths=[1.5, 1.0, 0.8],
        task=task, n_classes=3, dim=[8, 5, 6], latent=4, noise=0.5, seq_len=6,
        n_train=n_train, n_valid=32, n_test=48, seed=seed)
    return data


@pytest.mark.parametrize(("name", "overrides"), [
    ("mult", {}), ("mult", {"targets": ["text"]}), ("misa", {}), ("selfmm", {}),
    ("dmd", {}),
])
def test_classification_head_trains_on_three_modality_sequences(
        name: str, overrides: dict[str, object]) -> None:
    data = _seq_data("classification", n_train=120, seed=3)
    cfg = RunConfig(name, model=MODEL, method_cfg=overrides, train=TrainConfig(
        epochs=5, batch_size=24, lr=3e-3, seed=0, progress=False, device="cpu"))
    res = fit(cfg, data=data)
    with torch.no_grad():
        out = res.method.eval().predict(data.test.batch(torch.arange(4)))
    assert out.logits.shape == (4, 3)
    chance = float(torch.bincount(data.test.target.long()).max()) / len(data.test.target)
    assert res.test["accuracy"] > chance + 0.15, (res.test["accuracy"], chance)


def test_mult_targets_ablation_keeps_only_the_target_streams() -> None:
    info = _seq_data().info
    torch.manual_seed(0)
    full = create_method("mult", info, MODEL)
    torch.manual_seed(0)
    only = create_method("mult", info, MODEL, targets=["text"])
    assert sorted(only.model.streams.cross) == ["audio->text", "vision->text"]
    assert sorted(only.model.streams.memory) == ["text"] and len(full.model.streams.cross) == 6
    d = MODEL.hidden
    assert only.model.head.out.in_features == 2 * d and full.model.head.out.in_features == 6 * d
    batch = _seq_data().test.batch(torch.arange(6))
    with torch.no_grad():
        out = only.eval()(batch)
        assert set(out.features) == {"text"} and out.fused is not None
        assert out.fused.shape == (6, 2 * d)
        # The text memory is the same network in both builds (same init order): its pooled
        # output is what the restricted head sees.
        assert torch.allclose(out.fused, full.eval()(batch).features["text"], atol=1e-6)
    with pytest.raises(KeyError):
        create_method("mult", info, MODEL, targets=["nope"])


def test_dmd_final_gate_reads_the_heterogeneous_heads_residual_output() -> None:
    data = _seq_data()
    torch.manual_seed(0)
    method = create_method("dmd", data.info, MODEL).eval()
    net = method.model
    with torch.no_grad():
        out = method(data.test.batch(torch.arange(5)))
        ex, hd = out.extras, net.hetero_dim
        assert out.fused is not None
        for i, n in enumerate(data.info.modality_names):
            # Reference: sigmoid(projector_m(hs_proj_m_high)), the residual head output.
            expected = torch.sigmoid(net.gate[n](ex["hetero_repr"][i]))
            assert torch.allclose(out.fused[:, i * hd:(i + 1) * hd], expected, atol=1e-6)


def test_selfmm_unimodal_tasks_ablation_drops_the_other_subtasks() -> None:
    data = _seq_data()
    batch = data.train.batch(torch.arange(16))
    torch.manual_seed(0)
    method = create_method("selfmm", data.info, MODEL, unimodal_tasks=["audio"]).eval()
    method.init_banks(data.train.target)
    method.labels += 0.5  # generated labels away from y_m: every subtask weight > 0
    with torch.no_grad():
        t = method.compute_loss(batch, method(batch), None)
    assert {k for k in t if k.startswith("uni_")} == {"uni_audio"}
    assert float(t["uni_audio"]) > 0
    assert torch.allclose(t["loss"], t["fused"] + t["uni_audio"])
    full = create_method("selfmm", data.info, MODEL).eval()
    full.load_state_dict(method.state_dict())
    with torch.no_grad():
        t_full = full.compute_loss(batch, full(batch), None)
    assert {k for k in t_full if k.startswith("uni_")} == {f"uni_{n}" for n in data.info.modalities}
    assert torch.allclose(t_full["uni_audio"], t["uni_audio"]) and t_full["loss"] > t["loss"]
    fused_only = create_method("selfmm", data.info, MODEL, unimodal_tasks=[])
    with torch.no_grad():
        t0 = fused_only.compute_loss(batch, fused_only(batch), None)
    assert torch.allclose(t0["loss"], t0["fused"])
    with pytest.raises(KeyError):
        create_method("selfmm", data.info, MODEL, unimodal_tasks=["nope"])


def test_msa_preset_command_line_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    from equimodal.bench.cli import build_suite
    from equimodal.cli import build_run_config, make_parser
    from equimodal.presets import main

    assert main(["mosi", "--select", "f1"]) == 0
    train_args = capsys.readouterr().out.split()
    args = make_parser().parse_args(["train", "--method", "mult", *train_args,
                                     "--set", "data.path=MOSI/unaligned_50.pkl",
                                     "--seed", "1111"])
    cfg = build_run_config(args)
    assert (cfg.method, cfg.dataset, cfg.train.seed) == ("mult", "mmsa", 1111)
    assert cfg.data == {"name": "mosi", "task": "regression", "path": "MOSI/unaligned_50.pkl"}
    assert (cfg.train.select_metric, cfg.train.patience, cfg.train.epochs) == ("f1_non0", 8, 40)
    assert main(["mosei", "--bench"]) == 0
    bench_args = capsys.readouterr().out.split()
    args = make_parser().parse_args(["bench", "--methods", "mult,dmd", *bench_args])
    suite = build_suite(args)
    assert list(suite.seeds) == list(MSA_SEEDS)
    assert [d.name for d in suite.datasets] == ["mmsa"]
    assert "train.select_metric=mae" in args.set and "data.name=mosei" in args.set
