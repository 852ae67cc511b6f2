"""Diagnosing & Re-learning (Wei, Li, Feng & Hu, "Diagnosing and Re-learning for Balanced
Multimodal Learning", ECCV 2024).

Joint training with one task loss, interrupted every ``reinit_every`` epochs (at most
``reinit_num`` times) by a diagnosis and a soft re-initialisation of every encoder:

1. Diagnose: encode the training and the validation split with each encoder ``theta^m``,
   scale the features to ``[-1, 1]`` per dimension, cluster them with k-means into ``C``
   clusters and score the clustering by purity (the share of samples whose label is the
   majority label of their cluster). The learning state of modality ``m`` is the purity gap
   ``g^m = |P^m_train - P^m_val|``: a well-learnt (or over-trained) modality separates the
   training set much better than held-out data, a scarcely informative one separates
   neither, so it is not pushed to memorise noise.
2. Re-learn: ``alpha^m = tanh(lambda * g^m)`` and
   ``theta^m <- alpha^m theta^m_init + (1 - alpha^m) theta^m`` (stronger modalities are
   re-initialised more; the fusion head is kept).

The initial encoder weights ``theta^m_init`` are kept in buffers, so checkpoints restore
them. The diagnosis reads the validation split (the engine's selection split), never test.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.preprocessing import MinMaxScaler
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from equimodal.data.dataset import MultimodalSplit
from equimodal.engine.context import StepContext
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.multimodal import MultimodalModel
from equimodal.registry import register_method
from equimodal.types import TaskInfo

log = logging.getLogger(__name__)


def purity_score(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering purity: share of samples carrying their cluster's majority label.

    Example:
        >>> import numpy as np
        >>> purity_score(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 0, 1, 1]))
        0.8
    """
    if labels.size == 0:
        return 0.0
    hits = 0
    for c in np.unique(clusters):
        _, counts = np.unique(labels[clusters == c], return_counts=True)
        hits += int(counts.max())
    return hits / labels.size


def cluster_purity(features: np.ndarray, labels: np.ndarray, n_clusters: int, n_init: int = 10,
                   seed: int = 0) -> float:
    """Purity of k-means (``n_clusters``) on features min-max scaled to ``[-1, 1]``."""
    if features.shape[0] <= n_clusters:
        return 0.0
    scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features.astype(np.float64))
    pred = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(scaled)
    return purity_score(labels, pred)


def relearn_strength(purity_train: float, purity_valid: float, lam: float) -> float:
    """Re-initialisation strength ``alpha = tanh(lambda * |P_train - P_val|)``."""
    return math.tanh(lam * abs(purity_train - purity_valid))


@dataclass
class RelearningConfig(MethodConfig):
    """Diagnosing & Re-learning hyper-parameters (official code defaults).

    Attributes:
        move_lambda: ``lambda`` in ``alpha = tanh(lambda * purity gap)`` (``--move_lambda 3``).
        reinit_every: Epochs between diagnoses (``None``: ``max(1, round(epochs * 20 / 90))``,
            the code's ``--reinit_epoch 20`` of ``--epochs 90``).
        reinit_num: Most re-initialisations per run (``--reinit_num 3``).
        n_init: k-means restarts (scikit-learn's former default, used by the code).
        max_samples: Cap on samples per split fed to k-means (``None``: all), a speed knob.
    """

    move_lambda: float = 3.0
    reinit_every: int | None = None
    reinit_num: int = 3
    n_init: int = 10
    max_samples: int | None = None


@register_method("relearning")
class Relearning(Method):
    """Diagnosing & Re-learning: purity-gap diagnosis, then soft re-init of each encoder.

    Wei, Li, Feng & Hu, ECCV 2024. Every ``reinit_every`` epochs (at most ``reinit_num``
    times): ``P^m`` = k-means purity of encoder ``m``'s features on train / validation,
    ``alpha^m = tanh(lambda |P^m_train - P^m_val|)``,
    ``theta^m <- alpha^m theta^m_init + (1 - alpha^m) theta^m``; the loss is the task loss.
    """

    Config = RelearningConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = "Wei et al., Diagnosing and Re-learning for Balanced Multimodal Learning, ECCV 2024"
    family = "optimisation"

    reinit_count: Tensor
    last_alpha: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        if cfg.move_lambda < 0 or cfg.reinit_num < 0:
            raise ValueError("relearning: move_lambda and reinit_num must be >= 0")
        if cfg.reinit_every is not None and cfg.reinit_every < 1:
            raise ValueError("relearning: reinit_every must be >= 1")

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: RelearningConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        for i, name in enumerate(self.names):
            init = parameters_to_vector(self.encoder(name).parameters()).detach().clone()
            self.register_buffer(f"init_{i}", init)
        self.register_buffer("reinit_count", torch.tensor(0))
        self.register_buffer("last_alpha", torch.zeros(len(self.names)))

    def encoder(self, name: str) -> nn.Module:
        """The encoder module of modality ``name``."""
        return cast(MultimodalModel, self.model).encoders[name]

    def init_vector(self, name: str) -> Tensor:
        """Flattened initial weights ``theta^m_init`` of an encoder."""
        return cast(Tensor, getattr(self, f"init_{self.names.index(name)}"))

    # ----- schedule -----------------------------------------------------------------------
    def every(self, epochs: int) -> int:
        """Epochs between diagnoses for a run of ``epochs``."""
        if self.cfg.reinit_every is not None:
            return int(self.cfg.reinit_every)
        return max(1, round(epochs * 20 / 90))

    def on_epoch_start(self, ctx: StepContext) -> None:
        """After every ``reinit_every`` epochs (not before the first), diagnose and re-learn."""
        e = ctx.stage_epoch
        if e == 0 or e % self.every(ctx.train.epochs) != 0:
            return
        if int(self.reinit_count) >= self.cfg.reinit_num:
            return
        if ctx.valid_split is None or len(ctx.valid_split) == 0:
            log.warning("relearning: no validation split, skipping the diagnosis")
            return
        self.diagnose_and_relearn(ctx.train_split, ctx.valid_split, ctx.train.batch_size)

    # ----- diagnosis and re-learning ------------------------------------------------------
    @torch.no_grad()
    def features(self, split: MultimodalSplit, batch_size: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per-modality encoder features and labels of the rows where it is present."""
        net = cast(MultimodalModel, self.model)
        was = self.training
        self.eval()
        feats: dict[str, list[Tensor]] = {n: [] for n in self.names}
        labels: dict[str, list[Tensor]] = {n: [] for n in self.names}
        for batch in split.iter_batches(batch_size):
            enc = net.encode(batch)
            for n in self.names:
                keep = batch.present[n]
                feats[n].append(enc[n][keep].float().cpu())
                labels[n].append(batch.target[keep].cpu())
        self.train(was)
        cap = self.cfg.max_samples
        out_f = {n: torch.cat(v).numpy()[:cap] for n, v in feats.items()}
        out_y = {n: torch.cat(v).numpy()[:cap] for n, v in labels.items()}
        return out_f, out_y

    def diagnose(self, train: MultimodalSplit, valid: MultimodalSplit, batch_size: int
                 ) -> dict[str, tuple[float, float]]:
        """``(P_train, P_val)`` purity per modality."""
        c = self.info.num_outputs
        tf, ty = self.features(train, batch_size)
        vf, vy = self.features(valid, batch_size)
        return {n: (cluster_purity(tf[n], ty[n], c, self.cfg.n_init),
                    cluster_purity(vf[n], vy[n], c, self.cfg.n_init)) for n in self.names}

    @torch.no_grad()
    def soft_reinit(self, alphas: dict[str, float]) -> None:
        """``theta^m <- alpha^m theta^m_init + (1 - alpha^m) theta^m`` for every encoder."""
        for name, alpha in alphas.items():
            params = list(self.encoder(name).parameters())
            current = parameters_to_vector(params)
            init = self.init_vector(name).to(current)
            vector_to_parameters(alpha * init + (1.0 - alpha) * current, params)

    def diagnose_and_relearn(self, train: MultimodalSplit, valid: MultimodalSplit,
                             batch_size: int) -> dict[str, float]:
        """Diagnose every modality, soft re-initialise its encoder; returns the alphas."""
        purities = self.diagnose(train, valid, batch_size)
        alphas = {n: relearn_strength(pt, pv, self.cfg.move_lambda)
                  for n, (pt, pv) in purities.items()}
        self.soft_reinit(alphas)
        self.reinit_count += 1
        self.last_alpha.copy_(torch.tensor([alphas[n] for n in self.names]))
        log.info("relearning #%d purities %s alphas %s", int(self.reinit_count), purities, alphas)
        return alphas

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Log the last re-initialisation strengths."""
        row = {f"alpha_{n}": float(self.last_alpha[i]) for i, n in enumerate(self.names)}
        row["reinit_count"] = float(self.reinit_count)
        return row
