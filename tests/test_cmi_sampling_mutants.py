"""Closed-form checks of InfoBridge's context machinery (``losses/cmi.py``): conditional
negative sampling and the k-means contexts. Each test kills mutmut survivors listed in
docs/mutation.md (defaults, masks, empty-cluster re-seeding, the stopping rule, generators).
"""

from __future__ import annotations

import pytest
import torch

from equimodal.losses.cmi import kmeans, sample_negative_indices


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_negatives_default_to_the_anchors_own_context() -> None:
    anchor, pool = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1, 1, 2])
    idx, valid, fallback = sample_negative_indices(anchor, pool, 60, generator=_gen(0))
    assert idx.shape == (3, 60) and idx.dtype == torch.long
    # With replacement (60 draws from 2 candidates) and only from the own context.
    assert set(idx[0].tolist()) == {0, 1}
    assert set(idx[1].tolist()) == set(idx[2].tolist()) == {2, 3}
    assert valid.dtype == torch.bool and bool(valid.all())
    assert fallback.dtype == torch.bool and not bool(fallback.any())


def test_negatives_without_context_use_every_entry_and_flag_nothing() -> None:
    idx, valid, fallback = sample_negative_indices(
        torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 60, same_context=False,
        generator=_gen(1))
    assert set(idx[0].tolist()) == set(idx[1].tolist()) == {0, 1, 2}
    assert fallback.dtype == torch.bool and not bool(fallback.any()) and bool(valid.all())


def test_excluded_entries_fallback_and_invalid_rows() -> None:
    anchor, pool = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1, 2])
    exclude = torch.tensor([[1, 0, 0, 0],    # own context keeps entry 1
                            [1, 1, 0, 0],    # own context fully excluded: fallback to 2, 3
                            [1, 1, 1, 1]])   # nothing left: invalid, not a fallback
    idx, valid, fallback = sample_negative_indices(anchor, pool, 60, exclude=exclude,
                                                   generator=_gen(2))
    assert set(idx[0].tolist()) == {1}
    assert set(idx[1].tolist()) == {2, 3}
    assert valid.tolist() == [True, True, False]
    assert fallback.tolist() == [False, True, False]


def test_one_anchor_and_empty_pool() -> None:
    idx, _, _ = sample_negative_indices(torch.tensor([1]), torch.tensor([0, 1, 1]), 20,
                                        generator=_gen(3))
    assert set(idx[0].tolist()) == {1, 2}  # not the "empty" answer (zeros)
    idx, valid, fallback = sample_negative_indices(torch.tensor([0, 1]),
                                                   torch.zeros(0, dtype=torch.long), 5)
    assert idx.shape == (2, 5) and idx.dtype == torch.long and not bool(idx.any())
    assert valid.tolist() == [False, False] and fallback.tolist() == [False, False]


def test_negatives_are_reproducible_with_a_generator_only() -> None:
    anchor, pool = torch.zeros(4, dtype=torch.long), torch.zeros(50, dtype=torch.long)
    torch.manual_seed(10)
    a, _, _ = sample_negative_indices(anchor, pool, 30, generator=_gen(5))
    torch.manual_seed(11)  # the global RNG must not matter
    b, _, _ = sample_negative_indices(anchor, pool, 30, generator=_gen(5))
    assert torch.equal(a, b)


def test_kmeans_reseeds_an_empty_cluster_at_the_farthest_point() -> None:
    # All points go to the first centroid; the empty second one is re-seeded at the point
    # farthest (squared distance) from its assigned centroid: (-5, -5), not (1, 0).
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-5.0, -5.0]])
    c = kmeans(x, 2, iters=1, init=torch.tensor([[0.0, 0.0], [100.0, 100.0]]))
    torch.testing.assert_close(c, torch.tensor([[-4 / 3, -5 / 3], [-5.0, -5.0]]))
    # Distances to the centroid (-20, -20), not to its negation: (10, 11) is farthest.
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
    c = kmeans(x, 2, iters=1, init=torch.tensor([[-20.0, -20.0], [100.0, 100.0]]))
    torch.testing.assert_close(c, torch.tensor([[5.0, 5.5], [10.0, 11.0]]))


def test_kmeans_reseeds_several_empty_clusters_at_distinct_points() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]])
    init = torch.tensor([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0], [300.0, 0.0]])
    c = kmeans(x, 4, iters=1, init=init)
    # The three empty clusters take the 1st, 2nd and 3rd farthest points from (0, 0).
    torch.testing.assert_close(c[1:], torch.tensor([[0.0, 4.0], [3.0, 0.0], [0.0, 2.0]]))


def test_kmeans_single_point_cluster_is_that_point() -> None:
    x = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 10.0]])
    c = kmeans(x, 2, init=torch.tensor([[0.0, 1.5], [9.0, 9.0]]))
    torch.testing.assert_close(c, torch.tensor([[0.0, 1.0], [10.0, 10.0]]))


def test_kmeans_keeps_iterating_after_a_small_first_shift() -> None:
    # The first update moves a centroid by 0.47 only, but a point then changes cluster:
    # Lloyd's fixed point is (0.45, 2.5), not the first iterate (0, 1.967).
    x = torch.tensor([[0.0], [0.9], [2.0], [3.0]])
    c = kmeans(x, 2, init=torch.tensor([[0.0], [1.5]]))
    torch.testing.assert_close(c, torch.tensor([[0.45], [2.5]]))


def test_kmeans_plusplus_seeding_follows_the_generator() -> None:
    x = torch.randn(40, 3, generator=_gen(0))
    torch.manual_seed(1)
    a = kmeans(x, 5, iters=0, generator=_gen(7))
    torch.manual_seed(2)
    b = kmeans(x, 5, iters=0, generator=_gen(7))
    assert torch.equal(a, b)
    assert a.shape == (5, 3)
    # Every seed is a data point (k-means++ picks points, iters=0 returns the seeding).
    assert bool(((a[:, None, :] - x[None]).abs().sum(-1) == 0).any(1).all())


@pytest.mark.parametrize("iters", [0, 3])
def test_kmeans_warm_start_is_used(iters: int) -> None:
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    init = torch.tensor([[0.2], [10.7]])
    c = kmeans(x, 2, iters=iters, init=init)
    want = init if iters == 0 else torch.tensor([[0.5], [10.5]])
    torch.testing.assert_close(c, want)
