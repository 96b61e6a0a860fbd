"""data_prep.download against a loopback Hugging Face Hub that serves a synthetic raw tree.

``FakeHub`` implements the part of the Hub HTTP API that huggingface_hub 2.4.0 uses for listing
(``HfFileSystem``: repo info, paginated tree listing) and downloading (``hf_hub_download``: HEAD
and GET on ``resolve`` with ETag, X-Repo-Commit, Content-Length and Range). It is also used by
tests/test_storage.py for the ``hf://`` paths of tfpipe.storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from gcs_emulator import GcsEmulator

from data_prep.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "LEAP/ClimSim_low-res"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """A threaded loopback HTTP server that serves the files under ``root`` as dataset ``repo_id``.

    ``.nc`` files are presented as LFS files (sha256 oid, ETag = sha256), others as git files
    (git blob sha1). ``hidden`` paths are left out of listings and downloads; the first GET of a
    path in ``drop_once`` is cut off halfway (the client must retry).
    ``requests`` records ``(method, path, range header)`` of every request.
    """

    def __init__(self, root: Path, repo_id: str = REPO_ID, page_size: int = 5) -> None:
        self.root = root
        self.repo_id = repo_id
        self.page_size = page_size
        self.hidden: set[str] = set()
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._hashes: dict[str, tuple[str, str]] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub._handle(self, head=False)

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- content ---------------------------------------------------------------------------------

    def files(self) -> list[str]:
        """Relative paths of the repo's files (without hidden ones)."""
        out = []
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and rel not in self.hidden:
                out.append(rel)
        return out

    def _hash(self, rel: str) -> tuple[str, str]:
        with self._lock:
            if rel not in self._hashes:
                data = (self.root / rel).read_bytes()
                git = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
                self._hashes[rel] = (hashlib.sha256(data).hexdigest(), git)
            return self._hashes[rel]

    def _entry(self, rel: str) -> dict:
        path = self.root / rel
        if path.is_dir():
            return {
                "type": "directory",
                "oid": hashlib.sha1(rel.encode()).hexdigest(),
                "size": 0,
                "path": rel,
            }
        sha256, git = self._hash(rel)
        entry = {"type": "file", "oid": git, "size": path.stat().st_size, "path": rel}
        if rel.endswith(".nc"):
            entry["lfs"] = {"oid": sha256, "size": path.stat().st_size, "pointerSize": 134}
        return entry

    def _tree(self, folder: str, recursive: bool) -> list[dict] | None:
        base = self.root / folder if folder else self.root
        if not base.is_dir() or folder in self.hidden:
            return None
        paths = base.rglob("*") if recursive else base.iterdir()
        entries = []
        for path in sorted(paths):
            rel = path.relative_to(self.root).as_posix()
            if rel not in self.hidden:
                entries.append(self._entry(rel))
        return entries

    # -- HTTP ------------------------------------------------------------------------------------

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        headers: dict | None = None,
        head: bool = False,
        length: int | None = None,
    ) -> None:
        """Send a response; for HEAD only the headers (``length``: Content-Length of the GET)."""
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, str(value))
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(self, h: BaseHTTPRequestHandler, code: str, message: str, head: bool) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        if code == "EntryNotFound":
            headers["X-Repo-Commit"] = COMMIT
        self._send(h, 404, body, headers, head)

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        with self._lock:
            self.requests.append((h.command, path, h.headers.get("Range", "")))
        api = f"/api/datasets/{self.repo_id}"
        resolve = f"/datasets/{self.repo_id}/resolve/"
        if path == api or path.startswith(api + "/revision/"):
            revision = path[len(api + "/revision/") :] if path != api else "main"
            if revision not in ("main", COMMIT):
                return self._error(h, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            body = json.dumps({"id": self.repo_id, "sha": COMMIT, "private": False}).encode()
            return self._send(h, 200, body, {"Content-Type": "application/json"}, head)
        if path.startswith(api + "/tree/"):
            revision, _, folder = path[len(api + "/tree/") :].partition("/")
            if revision not in ("main", COMMIT):
                return self._error(h, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            query = parse_qs(url.query)
            entries = self._tree(folder.strip("/"), query.get("recursive", ["False"])[0].lower() == "true")
            if entries is None:
                return self._error(h, "EntryNotFound", f"{folder} does not exist on {revision}", head)
            start = int(query.get("cursor", ["0"])[0])
            page = entries[start : start + self.page_size]
            headers = {"Content-Type": "application/json"}
            if start + self.page_size < len(entries):
                params = "&".join(f"{k}={v[0]}" for k, v in query.items() if k != "cursor")
                next_url = f"{self.endpoint}{url.path}?{params}&cursor={start + self.page_size}"
                headers["Link"] = f'<{next_url}>; rel="next"'
            return self._send(h, 200, json.dumps(page).encode(), headers, head)
        if path.startswith(resolve):
            revision, _, rel = path[len(resolve) :].partition("/")
            if revision not in ("main", COMMIT):
                return self._error(h, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            file = self.root / rel
            if not file.is_file() or rel in self.hidden:
                return self._error(h, "EntryNotFound", f"{rel} does not exist", head)
            return self._serve_file(h, rel, file, head)
        if path.startswith("/api/"):
            return self._error(h, "RepoNotFound", "Repository not found", head)
        return self._send(h, 404, b"not found", {}, head)

    def _serve_file(self, h: BaseHTTPRequestHandler, rel: str, file: Path, head: bool) -> None:
        data = file.read_bytes()
        sha256, git = self._hash(rel)
        etag = sha256 if rel.endswith(".nc") else git
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
        status, body = 200, data
        range_header = h.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            first, _, last = range_header[len("bytes=") :].partition("-")
            start = int(first)
            end = int(last) if last else len(data) - 1
            body = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        if head:
            return self._send(h, status, b"", headers, head=True, length=len(body))
        with self._lock:
            drop = rel in self.drop_once
            self.drop_once.discard(rel)
        if drop:  # promise the whole body, send half, hang up
            h.send_response(status)
            for key, value in headers.items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._send(h, status, body, headers)


@pytest.fixture(scope="module")
def hub_tree(tmp_path_factory: pytest.TempPathFactory, small_raw_tree: Path) -> Path:
    """A repo: 2 steps in 0001-01, the 4 of small_raw_tree in 0001-02, 2 in 0001-03, grid, README."""
    base = tmp_path_factory.mktemp("hub")
    tree = base / "repo"
    synthesize(tree, days=2 / 72, start="0001-01-31", seed=2)
    synthesize(base / "march", days=2 / 72, start="0001-03-01", seed=3)
    shutil.move(base / "march" / "train" / "0001-03", tree / "train" / "0001-03")
    shutil.copytree(small_raw_tree / "train" / "0001-02", tree / "train" / "0001-02")
    (tree / "README.md").write_text("# synthetic ClimSim_low-res stand-in\n")
    return tree


@pytest.fixture
def hub(hub_tree: Path) -> Iterator[FakeHub]:
    server = FakeHub(hub_tree)
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(
    hub_endpoint: str, tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    full_env.pop("JOB_COMPLETION_INDEX", None)
    full_env.pop("CLOUD_RUN_TASK_INDEX", None)
    full_env.pop("CLOUD_RUN_TASK_COUNT", None)
    full_env.update(
        HF_ENDPOINT=hub_endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_ETAG_TIMEOUT="5",
        PYTHONPATH=str(REPO),
    )
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "data_prep.download", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _summary(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _downloaded(dst: Path) -> list[str]:
    return sorted(
        p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file() and ".cache" not in p.parts
    )


SRC = f"hf://datasets/{REPO_ID}"


def test_shards_cover_every_file_once_byte_identical_and_rerun_skips(
    hub: FakeHub, hub_tree: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "out"
    seen: list[str] = []
    hub.drop_once.add("train/0001-02/E3SM-MMF.mli.0001-02-01-01200.nc")  # cut off once, then resumed
    for shard in range(3):
        out = dst / f"s{shard}"
        summary = _summary(
            _run(
                hub.endpoint,
                tmp_path,
                "--src",
                SRC,
                "--dst",
                str(out),
                "--shard",
                str(shard),
                "--num-shards",
                "3",
            )
        )
        files = _downloaded(out)
        assert "grid-info.nc" in files and "README.md" not in files
        seen += [f for f in files if f != "grid-info.nc"]
        assert summary["downloaded"] == summary["files"] == len(files) and summary["skipped"] == 0
        assert summary["pairs_listed"] == 8 and summary["num_shards"] == 3 and summary["shard"] == shard
        assert summary["revision"] == "main" and summary["commit"] == COMMIT
        for rel in files:
            assert (out / rel).read_bytes() == (hub_tree / rel).read_bytes(), rel
        assert not [p for p in out.rglob("*") if p.name.endswith((".incomplete", ".tfpipe-tmp"))]
    expected = [f for f in hub.files() if f.startswith("train/")]
    assert sorted(seen) == expected  # every file exactly once over all shards
    assert len(expected) == 16
    assert not hub.drop_once
    # "main" is resolved to its commit once; files are listed and fetched at that commit.
    assert {p.split("/")[5] for _, p, _ in hub.requests if "/resolve/" in p} == {COMMIT}
    # The cut-off GET was retried by the hub client. (It resumes with a Range request only once a whole
    # 10 MB read chunk has arrived; these files are smaller, so it starts over.)
    gets = [r for m, p, r in hub.requests if m == "GET" and p.endswith("mli.0001-02-01-01200.nc")]
    assert len(gets) == 2

    # Shard 0 again: everything present with the right size, nothing fetched from the hub.
    hub.requests.clear()
    again = _summary(
        _run(
            hub.endpoint,
            tmp_path,
            "--src",
            SRC,
            "--dst",
            str(dst / "s0"),
            "--shard",
            "0",
            "--num-shards",
            "3",
        )
    )
    assert again["downloaded"] == 0 and again["skipped"] == again["files"] > 0
    assert not [p for _, p, _ in hub.requests if "/resolve/" in p]


def test_month_filter_env_shard_and_damaged_file(hub: FakeHub, hub_tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    proc = _run(
        hub.endpoint,
        tmp_path,
        *("--src", SRC, "--dst", str(dst), "--num-shards", "2", "--months", "0001-02..0001-03"),
        env={"JOB_COMPLETION_INDEX": "1"},
    )
    summary = _summary(proc)
    assert summary["shard"] == 1 and summary["months"] == "0001-02..0001-03" and summary["pairs_listed"] == 6
    files = [f for f in _downloaded(dst) if f.startswith("train/")]
    mli = sorted(f for f in hub.files() if "/0001-02/" in f or "/0001-03/" in f if ".mli." in f)[1::2]
    assert files == sorted(mli + [m.replace(".mli.", ".mlo.") for m in mli])

    # A damaged (truncated) local file is fetched again; the others are skipped.
    victim = dst / files[0]
    victim.write_bytes(victim.read_bytes()[:100])
    again = _summary(
        _run(
            hub.endpoint,
            tmp_path,
            "--src",
            SRC,
            "--dst",
            str(dst),
            "--shard",
            "1",
            "--num-shards",
            "2",
            "--months",
            "0001-02..0001-03",
        )
    )
    assert again["downloaded"] == 1 and again["skipped"] == again["files"] - 1
    assert victim.read_bytes() == (hub_tree / files[0]).read_bytes()

    only_jan = _summary(
        _run(hub.endpoint, tmp_path, "--src", SRC, "--dst", str(tmp_path / "jan"), "--months", "0001-01")
    )
    assert only_jan["pairs"] == 2 and only_jan["months"] == "0001-01..0001-01"


def test_errors_are_one_line_with_exit_code_2(hub: FakeHub, tmp_path: Path) -> None:
    def error_line(proc: subprocess.CompletedProcess) -> str:
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        return lines[0]

    dst = str(tmp_path / "out")
    line = error_line(
        _run(hub.endpoint, tmp_path, "--src", SRC, "--dst", dst, "--shard", "3", "--num-shards", "3")
    )
    assert "out of range" in line
    line = error_line(
        _run(
            hub.endpoint,
            tmp_path,
            "--src",
            SRC,
            "--dst",
            dst,
            "--num-shards",
            "2",
            env={"CLOUD_RUN_TASK_INDEX": "5"},
        )
    )
    assert "$CLOUD_RUN_TASK_INDEX=5 out of range" in line
    line = error_line(
        _run(hub.endpoint, tmp_path, "--src", SRC, "--dst", dst, "--months", "0002-01..0002-12")
    )
    assert "no raw files" in line and "0002-01..0002-12" in line
    line = error_line(_run(hub.endpoint, tmp_path, "--src", SRC, "--dst", dst, "--months", "0001-13"))
    assert "bad month" in line
    line = error_line(_run(hub.endpoint, tmp_path, "--src", "hf://datasets/LEAP/nope", "--dst", dst))
    assert "repository does not exist" in line

    t0 = time.monotonic()
    line = error_line(_run(f"http://127.0.0.1:{_closed_port()}", tmp_path, "--src", SRC, "--dst", dst))
    assert time.monotonic() - t0 < 20 and "127.0.0.1" in line

    mli = "train/0001-02/E3SM-MMF.mli.0001-02-01-02400.nc"
    hub.hidden.add(mli.replace(".mli.", ".mlo."))
    line = error_line(_run(hub.endpoint, tmp_path, "--src", SRC, "--dst", dst))
    assert mli in line and mli.replace(".mli.", ".mlo.") in line and "partner" in line
    assert not Path(dst, mli).exists()  # checked before anything is fetched


def test_local_and_gs_sources(
    small_raw_tree: Path, gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tfpipe import storage

    bucket = f"raw-tree-{os.getpid()}"
    gcs.create_bucket(bucket)
    env = {"STORAGE_EMULATOR_HOST": gcs.endpoint, "TFPIPE_GCS_DEADLINE_S": "10"}
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    storage.reset_clients()
    for path in small_raw_tree.rglob("*.nc"):
        storage.upload_file(path, f"gs://{bucket}/tree/{path.relative_to(small_raw_tree).as_posix()}")
    storage.reset_clients()

    for src in (str(small_raw_tree), f"gs://{bucket}/tree"):
        out = tmp_path / src.replace("/", "_")
        summary = _summary(
            _run(
                "http://127.0.0.1:9",
                tmp_path,
                *("--src", src, "--dst", str(out), "--shard", "1", "--num-shards", "2"),
                env=env,
            )
        )
        assert summary["pairs"] == 2 and summary["files"] == 5 and summary["revision"] is None
        files = _downloaded(out)
        assert len(files) == 5 and "grid-info.nc" in files
        for rel in files:
            assert (out / rel).read_bytes() == (small_raw_tree / rel).read_bytes()


def test_encode_streams_directly_from_hf(hub: FakeHub, hub_tree: Path, tmp_path: Path) -> None:
    """`data_prep.encode --src hf://...` reads the hub's files without a download step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_ETAG_TIMEOUT="5")
    for src, dst in ((SRC, tmp_path / "from-hf"), (str(hub_tree), tmp_path / "from-local")):
        proc = subprocess.run(
            [sys.executable, "-m", "data_prep.encode", "--src", src, "--dst", str(dst), "--shard", "0",
             "--num-shards", "1", "--no-progress"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["samples"] == 8 * 384
    parts = sorted(p.name for p in (tmp_path / "from-local").glob("part-*"))
    assert parts and parts == sorted(p.name for p in (tmp_path / "from-hf").glob("part-*"))
    for name in parts:  # the same records, whichever way the files were read
        assert (tmp_path / "from-hf" / name).read_bytes() == (tmp_path / "from-local" / name).read_bytes()
