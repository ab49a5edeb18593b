"""dishwatch train: data (loader + synthetic generator), the Inception CAE, fitting, evaluation, reports.

The data modules (`train.data`, `train.synth`) import no TensorFlow: the daemon's clip maker and `make run` use
them. Only `train.model`, `train.fit` and what needs Keras import it, and only when called.
"""
