"""The declared method contract: hooks with defaults, stage payloads, engine services, and
the rules the code base keeps (no undeclared ``getattr`` on methods, no stage-name parsing,
no method module importing another)."""

from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from equimodal.cli import main
from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import StepContext, Trainer
from equimodal.engine.optim import build_optimizer
from equimodal.eval.diagnostics import protocol_report
from equimodal.methods.base import Method, MethodConfig, Stage
from equimodal.models import build_multimodal_model
from equimodal.registry import METHODS, create_method

SRC = Path(__file__).resolve().parents[1] / "src" / "equimodal"
METHOD_DIR = SRC / "methods"

HOOKS = ("build_model", "check_task", "param_groups", "group_options", "stages", "forward",
         "compute_loss", "on_after_backward", "training_step", "predict", "modality_features",
         "modalities_in_use", "diagnostics", "on_stage_start", "on_epoch_start",
         "on_epoch_end", "unimodal_loss", "masked_task_loss", "task_loss")


class _InterruptError(Exception):
    pass


@dataclass
class _RecConfig(MethodConfig):
    pass


class _Recorder(Method):
    """Two stages; records what the engine tells it."""

    Config = _RecConfig
    name = "recorder_test"
    calls: list[tuple[str, bool]]
    stop_at: tuple[str, int] | None = None

    def stages(self, train: TrainConfig) -> list[Stage]:
        return [Stage("first", 2, key="phase", index=0), Stage("second", 3, key="phase", index=1)]

    def on_stage_start(self, stage: Stage, ctx: StepContext, resumed: bool = False) -> None:
        self.calls.append((stage.name, resumed))

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        self.batches.append(ctx.batch_index)
        assert ctx.params("main") is ctx.group_params["main"]
        assert ctx.loss_scale == 1.0
        return super().training_step(batch, ctx)

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        self.last.append((ctx.stage.index, ctx.stage_epoch, ctx.is_last_epoch))
        if self.stop_at == (ctx.stage.name, ctx.stage_epoch):
            raise _InterruptError
        return {}


def _recorder(data: MultimodalData) -> _Recorder:
    torch.manual_seed(0)
    method = _Recorder(build_multimodal_model(data.info, ModelConfig(hidden=8, layers=1)),
                       data.info, _RecConfig())
    method.calls, method.batches, method.last = [], [], []  # type: ignore[attr-defined]
    return method


def _train() -> TrainConfig:
    return TrainConfig(epochs=4, batch_size=40, progress=False, device="cpu")


# ----- declared hooks ------------------------------------------------------------------------
def test_every_hook_is_declared_with_a_docstring() -> None:
    for hook in HOOKS:
        attr = getattr(Method, hook)
        doc = (attr.fget if isinstance(attr, property) else attr).__doc__
        assert doc and doc.strip(), hook
    assert Method.contract_loss == "loss"
    assert METHODS.get("selfmm").contract_loss == "fused"
    assert not hasattr(METHODS.get("scope"), "recommended_train")  # presets hold recipes


def test_defaults_of_the_new_hooks(tiny_data: MultimodalData) -> None:
    concat = create_method("concat", tiny_data.info, ModelConfig(hidden=8, layers=1))
    assert concat.modalities_in_use == tiny_data.info.modality_names
    assert concat.diagnostics(tiny_data.valid) == {}
    only_b = create_method("unimodal", tiny_data.info, ModelConfig(hidden=8, layers=1),
                           modality="b")
    assert only_b.modalities_in_use == ["b"]


_GETATTR = re.compile(r"getattr\((?:self\.)?(?:method|cls|self\.method), ['\"](\w+)['\"]")


def test_no_undeclared_getattr_on_methods() -> None:
    found = []
    for path in SRC.rglob("*.py"):
        for name in _GETATTR.findall(path.read_text()):
            declared = hasattr(Method, name) or name in ("model", "info", "cfg")
            if not declared:
                found.append(f"{path.relative_to(SRC)}: {name}")
    assert not found, found


# ----- stages with a payload -------------------------------------------------------------------
def test_no_method_parses_a_stage_name() -> None:
    pattern = re.compile(r"stage(?:_name|\.name)\s*(?:==|!=|\[|\.startswith|\))|_BOOST|re\.match")
    offenders = [f"{p.name}:{i + 1}" for p in METHOD_DIR.glob("*.py")
                 for i, line in enumerate(p.read_text().splitlines())
                 if pattern.search(line) and "stage.name!r" not in line]
    assert not offenders, offenders


def test_stage_payload_drives_the_methods(tiny_data: MultimodalData) -> None:
    assert Stage("joint").key == "joint" and Stage("joint").index is None
    model = ModelConfig(hidden=8, layers=1)
    boost = create_method("reconboost", tiny_data.info, model)
    stages = boost.stages(TrainConfig(epochs=30))
    assert [(s.key, s.index) for s in stages[:3]] == [("boost", 0), ("rectify", None),
                                                      ("boost", 1)]
    # The name is only a label: a renamed stage selects the same learner.
    renamed = Stage("whatever", 4, groups=("learner",), key="boost", index=1)
    b_enc = {id(p) for p in boost.net.encoders["b"].parameters()}
    got = {id(p) for p in boost.param_groups(renamed)["learner"]}
    assert b_enc <= got and not {id(p) for p in boost.net.encoders["a"].parameters()} & got
    udi = create_method("udi", tiny_data.info, model)
    follower = udi.stages(TrainConfig(epochs=4))[1]
    assert (follower.name, follower.key, follower.index) == ("follower_1", "follower", 1)
    relabelled = Stage("f", 1, groups=follower.groups, select_best=False, key="follower",
                       index=1)
    assert udi._plan(relabelled) == udi._plan(follower)
    # No "prepared" flag any more; weights saved with it still load.
    state = udi.state_dict()
    assert "prepared" not in state
    udi.load_state_dict({**state, "prepared": torch.tensor(1)})


# ----- engine services and on_stage_start(resumed) --------------------------------------------
def test_context_services_follow_the_engine(tiny_data: MultimodalData) -> None:
    method = _recorder(tiny_data)
    Trainer(method, tiny_data, _train()).fit()
    assert method.calls == [("first", False), ("second", False)]
    # is_last_epoch is the engine's rule: the last scheduled epoch of each stage.
    assert method.last == [(0, 0, False), (0, 1, True), (1, 0, False), (1, 1, False),
                           (1, 2, True)]
    per_epoch = 160 // 40
    assert method.batches == list(range(per_epoch)) * 5


def test_on_stage_start_is_called_again_on_resume(tiny_data: MultimodalData,
                                                  tmp_path: Path) -> None:
    method = _recorder(tiny_data)
    method.stop_at = ("second", 1)
    with pytest.raises(_InterruptError):
        Trainer(method, tiny_data, _train(), run_dir=tmp_path).fit()
    assert (tmp_path / "last.pt").exists()
    again = _recorder(tiny_data)
    Trainer(again, tiny_data, _train(), run_dir=tmp_path).fit()
    assert again.calls == [("second", True)]
    # The checkpoint was written after epoch 0 of stage two: it resumes at epoch 1.
    assert again.last[0] == (1, 1, False)


def test_train_module_is_the_probe_loop_gblending_had(tiny_data: MultimodalData) -> None:
    """The engine facility reproduces G-Blending's former hand-written probe loop exactly."""
    train = TrainConfig(batch_size=32, lr=1e-2, clip_norm=0.5, device="cpu")
    torch.manual_seed(0)
    net = build_multimodal_model(tiny_data.info, ModelConfig(hidden=8, layers=1))
    head = nn.Linear(8, 3)
    ours, ref = copy.deepcopy(nn.ModuleList([net, head])), copy.deepcopy(nn.ModuleList([net, head]))
    split = tiny_data.train

    def loss_of(module: nn.Module) -> Any:
        return lambda batch: torch.nn.functional.cross_entropy(module[0](batch).logits,
                                                               batch.target)

    ctx = StepContext(train, torch.device("cpu"), split, torch.Generator().manual_seed(3))
    ctx.train_module(ours, loss_of(ours), split, epochs=2)
    # The former loop of gblending._probe.
    gen = torch.Generator().manual_seed(3)
    params = [p for p in ref.parameters() if p.requires_grad]
    opt = build_optimizer(params, train)
    for _ in range(2):
        order = torch.randperm(len(split), generator=gen)
        for start in range(0, len(split), 32):
            batch = split.batch(order[start : start + 32])
            grads = torch.autograd.grad(loss_of(ref)(batch), params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(next(ours.parameters()), next(net.parameters()))  # it trained


# ----- diagnostics: one hook, reached by eval and the CLI ------------------------------------
def test_diagnostics_hook_reaches_eval_and_cli(tiny_data: MultimodalData, tmp_path: Path,
                                               monkeypatch: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    late = METHODS.get("late")
    seen: list[int] = []

    def diagnostics(self: Method, split: Any) -> dict[str, float]:
        seen.append(len(split))
        return {"dirichlet_x": 2.5, "contribution/a": 0.75}

    monkeypatch.setattr(late, "diagnostics", diagnostics)
    method = create_method("late", tiny_data.info, ModelConfig(hidden=8, layers=1))
    rep = protocol_report(method, tiny_data.test, tiny_data.info, ["dirichlet"])
    assert rep["diagnostics"] == {"dirichlet": {"dirichlet_x": 2.5},
                                  "method": {"contribution/a": 0.75}}
    assert main(["train", "-m", "late", "-d", "synthetic", "--epochs", "1", "--out",
                 str(tmp_path), "--no-progress", "-s", "data.n_train=64",
                 "-s", "data.n_valid=32", "-s", "data.n_test=32"]) == 0
    out = capsys.readouterr().out
    assert "diagnostics (validation split):" in out and "dirichlet_x" in out
    assert "contribution/a" in out and seen[-1] == 32


# ----- helpers have one home -----------------------------------------------------------------
def _registers_a_method(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "register_method":
            return True
    return False


def test_no_method_module_imports_another() -> None:
    trees = {p.stem: ast.parse(p.read_text()) for p in METHOD_DIR.glob("*.py")}
    method_modules = {name for name, tree in trees.items() if _registers_a_method(tree)}
    assert {"gblending", "mult", "ogm_ge", "infonce", "ebmc", "udi"} <= method_modules
    bad = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "equimodal.methods":
                    targets = [a.name for a in node.names]
                elif node.module.startswith("equimodal.methods."):
                    targets = [node.module.split(".")[2]]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[2] for a in node.names
                           if a.name.startswith("equimodal.methods.")]
            bad += [f"{name} -> {t}" for t in targets if t in method_modules and t != name]
    assert not bad, bad
