import os as _os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features, absl) drowns our one-line errors;
# users who want it set TF_CPP_MIN_LOG_LEVEL themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
