"""Scores and the files they are computed from: the Kaggle R² and the headline R² against the training
variance (:mod:`~tfpipe.evaluate.metrics`), the official ClimSim metrics
(:mod:`~tfpipe.evaluate.climsim_metrics`), ``tfpipe score`` (:mod:`~tfpipe.evaluate.score`), prediction
and truth parquet files with their metadata (:mod:`~tfpipe.evaluate.prediction_files`) and ``tfpipe
export``, encoded shards to a truth file (:mod:`~tfpipe.evaluate.export`).

May import :mod:`tfpipe.data` and :mod:`tfpipe.storage`; no models, no training, no command line. This
package loads nothing itself: import the module you need.
"""
