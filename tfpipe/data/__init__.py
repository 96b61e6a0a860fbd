"""The data contract and its readers: the variable schemas (:mod:`~tfpipe.data.schema`, the one source
of truth for every layout), TFRecord shards (:mod:`~tfpipe.data.records`, :mod:`~tfpipe.data.manifest`),
statistics (:mod:`~tfpipe.data.stats`), the grid (:mod:`~tfpipe.data.grid`), Kaggle CSVs and raw file
trees (:mod:`~tfpipe.data.kaggle_csv`, :mod:`~tfpipe.data.rawtree`), the normalisation layer and its
float64 inverse (:mod:`~tfpipe.data.normalize`, :mod:`~tfpipe.data.postprocess`), source mixing
(:mod:`~tfpipe.data.sampling`) and the tf.data pipeline (:mod:`~tfpipe.data.pipeline`).

May import :mod:`tfpipe.storage` and :mod:`tfpipe.config`; nothing of models, training, evaluation or
the command line. Import the module you need: this package loads nothing itself, so the schema is
usable without TensorFlow.
"""
