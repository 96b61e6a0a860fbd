import os as _os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features, absl) drowns our one-line errors;
# users who want it set TF_CPP_MIN_LOG_LEVEL themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings as _warnings

# google-api-core warns on every import that Python 3.11 support ends in 2027; it is noise in our
# one-line error messages (the pinned stack supports 3.10-3.12).
_warnings.filterwarnings("ignore", category=FutureWarning, module="google.api_core")

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("tfpipe")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
