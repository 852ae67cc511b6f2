"""Linear probes on frozen per-modality features: the honest weak-modality measure.

The field's per-modality "accuracy" is the split read-out of the fused head
(``h_m W_m^T + b / M``, OGM-GE's code). It is kept for comparison with papers, but it is
sensitive to constant offsets in ``h_m`` and favours sum-fusion methods. A linear probe asks
the representation question directly: how much of the label can a linear head read from the
modality's frozen features? A logistic head (classification) or ridge head (regression) is
fitted on the train split's features, its L2 strength is selected on valid, and it is scored
on valid and test.

Classification objective (multinomial logistic regression, bias unpenalised)::

    min_{W, b}  (1/N) sum_i CE(x_i W + b, y_i) + (lam / 2) ||W||^2

which equals scikit-learn's ``LogisticRegression(C=1 / (lam * N))`` objective up to the
factor N. Solved with L-BFGS (strong-Wolfe line search, analytic gradient) in float64 on
features standardised with the train split's mean / std, every strength of the grid in one
stacked problem (see :func:`fit_logistic`). Regression: ridge in closed form on the same
standardised features. Everything is vectorised; no per-sample Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

PROBE_LAMBDAS: tuple[float, ...] = (1.0, 1e-1, 1e-2, 1e-3)
"""L2 strengths tried (strongest first), selected on the valid split."""

MAX_TRAIN_ROWS = 20_000
"""Probes fit on at most this many (seeded, random) train rows."""


@dataclass
class ProbeResult:
    """A fitted probe's selection and scores.

    Attributes:
        lam: Selected L2 strength.
        valid: Metrics on valid (``accuracy``/``macro_f1`` or ``mae``).
        test: Metrics on test.
        by_lambda: Valid selection score per strength tried.
    """

    lam: float
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    by_lambda: dict[float, float] = field(default_factory=dict)


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, lam: float | Sequence[float],
                 max_iter: int = 200, tol: float = 1e-9) -> tuple[Tensor, Tensor]:
    """L2-regularised multinomial logistic regression by L-BFGS, for one or several
    strengths at once.

    The strengths' problems are independent, so their summed objective is minimised by the
    per-strength optima: one L-BFGS over the stacked weights fits the whole path with one
    set of closure calls (the cost here is per call, not per flop). The gradient is the
    analytic ``X^T (softmax - onehot) / N + lam W`` (no autograd graph).

    Args:
        x: Features ``[N, H]`` (float64 recommended).
        y: Class ids ``[N]``.
        n_classes: Number of classes C.
        lam: L2 strength(s) on ``W`` (mean-loss scale; sklearn ``C = 1 / (lam * N)``).
        max_iter: L-BFGS iterations.
        tol: Stop when the gradient's max-norm falls below ``tol``.

    Returns:
        ``W`` ``[H, C]`` and ``b`` ``[C]`` for a scalar ``lam``; ``[L, H, C]`` and
        ``[L, C]`` for ``L`` strengths.
    """
    scalar = isinstance(lam, (int, float))
    values = [float(lam)] if isinstance(lam, (int, float)) else [float(v) for v in lam]
    lams = torch.tensor(values, dtype=x.dtype, device=x.device)
    n, h = x.shape
    n_l = len(lams)
    onehot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype)
    theta = torch.zeros(n_l * (h + 1) * n_classes, dtype=x.dtype, device=x.device)
    theta.grad = torch.zeros_like(theta)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=tol,
                            tolerance_change=tol * 1e-3, history_size=10,
                            line_search_fn="strong_wolfe")

    def unpack(t: Tensor) -> tuple[Tensor, Tensor]:
        wb = t.view(n_l, h + 1, n_classes)
        return wb[:, :h], wb[:, h]

    def closure() -> Tensor:
        w, b = unpack(theta)
        logits = torch.einsum("nh,lhc->lnc", x, w) + b[:, None, :]
        logp = torch.log_softmax(logits, -1)
        ce = -(logp * onehot).sum(-1).mean(-1)  # [L]
        loss = (ce + 0.5 * lams * (w * w).sum((1, 2))).sum()
        resid = (logp.exp() - onehot) / n  # [L, N, C]
        gw = torch.einsum("nh,lnc->lhc", x, resid) + lams[:, None, None] * w
        theta.grad = torch.cat([gw, resid.sum(1)[:, None, :]], 1).reshape(-1)
        return loss

    with torch.no_grad():
        opt.step(closure)
    w, b = unpack(theta.detach())
    return (w[0], b[0]) if scalar else (w, b)


def fit_ridge(x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Closed-form ridge ``min (1/N) ||x W + b - y||^2 + lam ||W||^2`` (bias unpenalised).

    Returns:
        ``W`` ``[H, 1]`` and ``b`` ``[1]``.
    """
    mx, my = x.mean(0), y.mean()
    xc, yc = x - mx, (y - my).unsqueeze(1)
    n, h = x.shape
    gram = xc.T @ xc / n + lam * torch.eye(h, dtype=x.dtype, device=x.device)
    w = torch.linalg.solve(gram, xc.T @ yc / n)
    return w, (my - mx @ w).reshape(1)


def _standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean = train.mean(0)
    std = train.std(0, unbiased=False).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _class_scores(logits: Tensor, y: Tensor, n_classes: int) -> dict[str, float]:
    pred = logits.argmax(1)
    conf = torch.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes).double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1)
    support = conf.sum(1) > 0
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    # Macro F1 over the classes present in the split (sklearn's labels=present convention).
    macro = float(f1[support].mean()) if bool(support.any()) else float("nan")
    return {"accuracy": float((pred == y).double().mean()), "macro_f1": macro}


def linear_probe(kind: str, train: tuple[Tensor, Tensor], valid: tuple[Tensor, Tensor],
                 test: tuple[Tensor, Tensor], n_classes: int = 0,
                 lambdas: Sequence[float] = PROBE_LAMBDAS, seed: int = 0) -> ProbeResult | None:
    """Fit a linear probe on train features, select its L2 strength on valid, score test.

    Args:
        kind: ``classification`` (logistic) or ``regression`` (ridge); anything else gives
            ``None``.
        train: Train ``(features [N, H], targets [N])``.
        valid: Valid split, same layout.
        test: Test split, same layout.
        n_classes: Number of classes (classification).
        lambdas: L2 strengths tried; classification selects the best valid accuracy (ties:
            lower valid cross-entropy), regression the lowest valid MAE.
        seed: Seed of the train-row subsample when train has more than
            :data:`MAX_TRAIN_ROWS` rows.

    Returns:
        A :class:`ProbeResult`, or ``None`` when the task kind has no probe or a split is
        empty.
    """
    if kind not in ("classification", "regression") or min(
        len(train[0]), len(valid[0]), len(test[0])
    ) == 0:
        return None
    xtr, ytr = train
    if len(xtr) > MAX_TRAIN_ROWS:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(xtr), generator=g)[:MAX_TRAIN_ROWS]
        xtr, ytr = xtr[keep], ytr[keep]
    xtr, xva, xte = _standardise(*(t.detach().double().cpu() for t in (xtr, valid[0], test[0])))
    if kind == "classification":
        ytr_, yva, yte = (t.detach().long().cpu().reshape(-1) for t in (ytr, valid[1], test[1]))
        best: tuple[float, float, float, Tensor, Tensor] | None = None
        by: dict[float, float] = {}
        # 1e-6 on the gradient: the selected probe's accuracy is settled long before.
        ws, bs = fit_logistic(xtr, ytr_, n_classes, [float(v) for v in lambdas],
                              max_iter=60, tol=1e-6)
        for lam, w, b in zip(lambdas, ws, bs, strict=True):
            logits = xva @ w + b
            acc = float((logits.argmax(1) == yva).double().mean())
            ce = float(torch.nn.functional.cross_entropy(logits, yva))
            by[float(lam)] = acc
            if best is None or acc > best[0] or (acc == best[0] and ce < best[1]):
                best = (acc, ce, float(lam), w, b)
        assert best is not None
        _, _, lam, w, b = best
        return ProbeResult(lam, _class_scores(xva @ w + b, yva, n_classes),
                           _class_scores(xte @ w + b, yte, n_classes), by)
    ytr_, yva, yte = (t.detach().double().cpu().reshape(-1) for t in (ytr, valid[1], test[1]))
    fits = {float(lam): fit_ridge(xtr, ytr_, float(lam)) for lam in lambdas}
    by = {lam: float((xva @ w + b - yva.unsqueeze(1)).abs().mean()) for lam, (w, b) in
          fits.items()}
    lam = min(by, key=lambda k: by[k])
    w, b = fits[lam]
    return ProbeResult(lam, {"mae": by[lam]},
                       {"mae": float((xte @ w + b - yte.unsqueeze(1)).abs().mean())}, by)
