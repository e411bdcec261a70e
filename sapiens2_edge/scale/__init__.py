"""Scale-out batch inference: the Predictor on Ray Data over folders of images and videos, one
Parquet row per image or frame, resumable (``pip install 'sapiens2-edge[ray]'``).

* :class:`PredictorFactory` (picklable: what to open) and :class:`BatchPredictor` (a callable class
  loading it once per worker; a batch as a dict of numpy arrays in, result columns out) work in any
  engine that calls a class per batch: Ray Data's ``map_batches``, Spark's ``predict_batch_udf``,
  a Beam ``ModelHandler`` (see the README).
* :func:`predict_dataset` runs a whole source on a Ray cluster and returns a :class:`Summary`.
* :func:`decode_row` turns a written row back into the task's arrays.

Only :func:`predict_dataset` imports Ray; the rest needs numpy and OpenCV (and pyarrow for Ray's
table form).
"""

from __future__ import annotations

from .batch import BatchPredictor, PredictorFactory, RayBatchPredictor
from .dataset import Summary, predict_dataset
from .encode import columns, decode_row

__all__ = ["BatchPredictor", "PredictorFactory", "RayBatchPredictor", "Summary", "columns", "decode_row",
           "predict_dataset"]
