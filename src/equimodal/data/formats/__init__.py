"""Loaders for real-benchmark file formats and the feature-preparation steps behind them.

* :func:`load_generic` / :func:`write_generic`: one array per modality + labels + split
  (folder of ``.npy``, one ``.npz`` or ``.parquet``); what prepared features are written as.
* :func:`to_generic`: a loaded dataset (e.g. from a pickle) -> generic folder / ``.npz``.
* :func:`load_mmsa`: MMSA pickles of CMU-MOSI, CMU-MOSEI and CH-SIMS.
* :func:`load_iemocap`: MulT-style IEMOCAP pickles (4 emotions).
* :func:`prepare_cremad` / :func:`load_cremad`: CREMA-D WAVs + frames -> log-mel + pixels.
* :func:`prepare_imagetext`: MVSA / Food-101-style image-text folders -> pixels + TF-IDF.

Every loader returns a :class:`LoadedData` (a :class:`~equimodal.data.MultimodalData` with
``excluded`` counts) and raises :class:`~equimodal.data.DataError` naming file and field.
"""

from equimodal.data.formats.cache import PrepareResult
from equimodal.data.formats.common import LoadedData, SplitArrays, assemble, random_split
from equimodal.data.formats.convert import to_generic
from equimodal.data.formats.cremad import load_cremad, prepare_cremad
from equimodal.data.formats.generic import load_generic, write_generic
from equimodal.data.formats.iemocap import load_iemocap
from equimodal.data.formats.imagetext import prepare_imagetext
from equimodal.data.formats.mmsa import classes_from_scores, load_mmsa

__all__ = [
    "LoadedData",
    "PrepareResult",
    "SplitArrays",
    "assemble",
    "classes_from_scores",
    "load_cremad",
    "load_generic",
    "load_iemocap",
    "load_mmsa",
    "prepare_cremad",
    "prepare_imagetext",
    "random_split",
    "to_generic",
    "write_generic",
]
