"""The storage layer against a local folder and a real S3-compatible server on 127.0.0.1."""

import http.server
import os
import socketserver
import threading
import urllib.request

import pytest

from pipeline.storage.store import S3Store, StoreError, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    return open_store(request.getfixturevalue("s3_bucket") + "/some/prefix")


def test_put_get_list_exists_delete(store):
    store.put("a.txt", b"hello")
    store.put_text("dir/b.json", '{"x": 1}')
    assert store.get("a.txt") == b"hello"
    assert store.exists("dir/b.json") and not store.exists("nope")
    assert [(o.key, o.size) for o in sorted(store.list(), key=lambda o: o.key)] == [("a.txt", 5), ("dir/b.json", 8)]
    assert [o.key for o in store.list("dir/")] == ["dir/b.json"]
    store.delete("a.txt")
    assert not store.exists("a.txt")
    assert store.delete_prefix("dir/") == 1
    assert store.list() == []


def test_prefixes_mean_the_same_on_both_stores_mid_name_and_nested(store, tmp_path):
    """A local store walks only the folder a prefix names; what it lists must stay S3's answer."""
    keys = ["a.txt", "ab/c.txt", "ab/cd/e.txt", "abc.txt", "b/x.txt", "_r/done/1.json", "_r/done/2.json", "_r/run.json"]
    for key in keys:
        store.put(key, b"x")
    local = store.url.startswith("/")
    if local:  # what killed writers leave (hidden temporaries) is never listed
        (tmp_path / "store" / "_r" / "done" / ".3.json.tmp-x").write_bytes(b"half")
        (tmp_path / "store" / ".abd.txt.tmp-y").write_bytes(b"half")
    for prefix in ["", "a", "ab", "ab/", "ab/c", "ab/cd/", "ab/cd/e.txt", "_r/", "_r/d", "_r/done/", "zz/", "b/x"]:
        assert sorted(o.key for o in store.list(prefix)) == [k for k in sorted(keys) if k.startswith(prefix)], prefix
    assert store.delete_prefix("_r/") == 3  # and the killed write under it: the folder goes
    assert store.delete_prefix("ab/c") == 2
    assert sorted(o.key for o in store.list()) == ["a.txt", "abc.txt", "b/x.txt"]
    if local:  # no empty folders left behind; a temporary for a key outside the prefix stays
        assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".abd.txt.tmp-y", "a.txt", "abc.txt", "b"]
        assert store.delete_prefix("abd") == 0 and not (tmp_path / "store" / ".abd.txt.tmp-y").exists()


def test_missing_object_is_a_store_error(store):
    with pytest.raises(StoreError, match="no such object"):
        store.get("missing.bin")


def test_streaming_read_in_chunks(store):
    data = os.urandom(3 * 1024 * 1024 + 17)
    store.put("big.bin", data)
    with store.open("big.bin") as f:
        parts = []
        while chunk := f.read(100_000):
            parts.append(chunk)
    assert b"".join(parts) == data


def test_multipart_upload(s3_bucket, tmp_path):
    store = open_store(s3_bucket + "/mp")
    store.multipart_threshold = store.multipart_chunksize = 5 * 1024 * 1024  # S3's smallest part
    data = os.urandom(11 * 1024 * 1024)
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as f:
        store.put_fileobj("f.bin", f)
    head = store.client.head_object(Bucket=store.bucket, Key="mp/f.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: S3 marks multipart ETags with -N
    assert store.get("f.bin") == data


def test_local_put_is_atomic_no_temp_left(tmp_path):
    store = open_store(f"file://{tmp_path}/s")
    store.put("x/y.bin", b"1")
    with pytest.raises(RuntimeError):
        with store.stage("x/z.bin") as staged:
            staged.file.write(b"half")
            raise RuntimeError("crash while writing")
    assert [o.key for o in store.list()] == ["x/y.bin"]
    assert sorted(p.name for p in (tmp_path / "s" / "x").iterdir()) == ["y.bin"]


def test_a_killed_local_writer_leaves_nothing_and_a_commit_replaces_whole(tmp_path):
    """A shard written in place (Store.stage) is invisible until committed, even to `ls`, and a
    writer killed half way leaves no file behind."""
    import signal
    import subprocess
    import sys

    store = open_store(str(tmp_path / "s"))
    store.put("x/a.tar", b"old")
    code = ("import time; from pipeline.storage.store import open_store\n"
            f"staged = open_store({str(tmp_path / 's')!r}).stage('x/a.tar')\n"
            "staged.file.write(b'half' * 100000); staged.file.flush(); print('written', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "written"
    assert sorted(p.name for p in (tmp_path / "s" / "x").iterdir()) == ["a.tar"]  # nothing named yet
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert sorted(p.name for p in (tmp_path / "s" / "x").iterdir()) == ["a.tar"]
    assert store.get("x/a.tar") == b"old"
    with store.stage("x/a.tar") as staged:
        staged.file.write(b"new" * 1000)
        assert store.get("x/a.tar") == b"old"
    assert store.get("x/a.tar") == b"new" * 1000
    assert sorted(p.name for p in (tmp_path / "s" / "x").iterdir()) == ["a.tar"]


def test_bad_urls():
    with pytest.raises(StoreError, match="unsupported storage scheme"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="needs a bucket"):
        open_store("s3:///x")


class _FlakyProxy(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def test_retries_on_503_and_dropped_connections(s3_server, s3_bucket, monkeypatch):
    """A real proxy on 127.0.0.1 that answers 503, then drops a connection, then forwards to S3."""
    failures = {"503": 2, "drop": 1}
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self):
            seen.append(self.command)
            if failures["503"] > 0:
                failures["503"] -= 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if failures["drop"] > 0:
                failures["drop"] -= 1
                self.connection.close()  # hang up without an answer
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "expect")}
            headers.setdefault("Content-Type", "application/octet-stream")  # else urllib says form data
            req = urllib.request.Request(s3_server + self.path, data=body or None, method=self.command,
                                         headers=headers)
            try:
                resp = urllib.request.urlopen(req)
            except urllib.error.HTTPError as e:
                resp = e
            payload = resp.read()
            self.send_response(resp.status)
            for k, v in resp.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

        def log_message(self, *args):
            pass

    proxy = _FlakyProxy(("127.0.0.1", 0), Handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_address[1]}")
        store = open_store(s3_bucket + "/flaky")
        assert isinstance(store, S3Store)
        store.put("k", b"survived")
        assert store.get("k") == b"survived"
        assert failures == {"503": 0, "drop": 0}
        assert len(seen) >= 5  # 2 x 503 + 1 drop + put + get
    finally:
        proxy.shutdown()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_written_honour_the_umask_shards_index_and_checkpoints_included(tmp_path, umask):
    import io

    from audio_fixtures import make_dataset
    from pipeline.runs.checkpoints import Checkpoints

    saved = os.umask(umask)
    try:
        store = open_store(str(tmp_path / "store"))
        store.put("a.bin", b"x")
        store.put_fileobj("b.bin", io.BytesIO(b"y"))
        make_dataset(str(tmp_path / "data"), [2, 2])
        Checkpoints(str(tmp_path / "run")).save(3, {"model": {"w": [1.0]}, "train": {"step": 3}})
    finally:
        os.umask(saved)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"a.bin", "b.bin", "index.json", "train-000000.tar", "manifest.json"}
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~umask)}


@pytest.mark.parametrize("missing", ["O_TMPFILE", "proc link"])
def test_local_writes_without_unnamed_files_or_proc_still_replace_whole(tmp_path, monkeypatch, missing):
    """Where the file system cannot make unnamed files (NFS, older overlayfs) a hidden temporary
    name is used from the start; where /proc cannot name one, it is copied out to such a name."""
    if missing == "O_TMPFILE":
        monkeypatch.delattr(os, "O_TMPFILE")
    else:
        def no_proc(*args, **kwargs):
            raise OSError(2, "no /proc here")
        monkeypatch.setattr(os, "link", no_proc)
    store = open_store(str(tmp_path / "s"))
    store.put("x/a.bin", b"one")
    with pytest.raises(RuntimeError):
        with store.stage("x/a.bin") as staged:
            staged.file.write(b"half")
            raise RuntimeError("crash while writing")
    with store.stage("x/b.bin") as staged:
        staged.file.write(b"two" * 1000)
    assert store.get("x/a.bin") == b"one" and store.get("x/b.bin") == b"two" * 1000
    assert sorted(p.name for p in (tmp_path / "s" / "x").iterdir()) == ["a.bin", "b.bin"]


def test_s3_delete_prefix_deletes_in_batches_and_falls_back_one_by_one(s3_bucket):
    """Clearing a prefix costs one request per batch of keys (S3 takes 1000), not one per key; a
    store without batch delete (GCS's interop answers NotImplemented) is cleared key by key. Only
    the prefix goes."""
    from botocore.exceptions import ClientError

    store = open_store(s3_bucket + "/ds")
    other = open_store(s3_bucket + "/ds-other")
    other.put("keep.bin", b"k")
    calls = []
    store.client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    for i in range(7):
        store.put(f"_records/done/{i}.json", b"{}")
    store.delete_batch = 3
    calls.clear()
    assert store.delete_prefix("_records/") == 7
    assert calls == ["ListObjectsV2", "DeleteObjects", "DeleteObjects", "DeleteObjects"]
    assert store.list() == [] and other.get("keep.bin") == b"k"

    for i in range(4):
        store.put(f"x/{i}", b"1")

    def not_implemented(**_):
        raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no multi-object delete"}}, "DeleteObjects")

    store.client.delete_objects = not_implemented
    calls.clear()
    assert store.delete_prefix("x/") == 4
    assert calls == ["ListObjectsV2"] + ["DeleteObject"] * 4 and store.list() == []


def test_a_wide_listing_is_the_listing_with_folders_listed_at_once(store, monkeypatch):
    """list_wide returns what list returns (sorted), on both stores; on S3 it opens folders with a
    delimiter and lists them side by side: more LISTs, each over fewer keys, at once."""
    from run_fixtures import CountingProxy

    keys = ["top.txt", *(f"spk{s:02d}/{d}/utt{u}.flac" for s in range(20) for d in ("a", "b") for u in range(3)),
            "spk05/notes.txt", "z/deep/er/still/x.flac"]
    for key in keys:
        store.put(key, b"x")
    assert [o.key for o in store.list_wide()] == sorted(o.key for o in store.list()) == sorted(keys)
    assert [o.key for o in store.list_wide("spk05/")] == sorted(k for k in keys if k.startswith("spk05/"))
    if isinstance(store, S3Store):
        listed = sorted((o.key, o.size, o.etag) for o in store.list())
        with CountingProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            wide = open_store(store.url)
            assert [(o.key, o.size, o.etag) for o in wide.list_wide(threads=8)] == listed
            assert proxy.requests["GET"] == 1 + 21  # the root's level, then its 21 folders (>= 8) each whole
            assert [(o.key, o.size, o.etag) for o in wide.list_wide(threads=64)] == listed
            # three levels opened (1, 21 and 41 folders), then the one folder left below them whole
            assert proxy.requests["GET"] == 22 + 1 + 21 + 41 + 1


def test_a_seekable_remote_file_reads_front_to_back_by_parts_ahead_and_anywhere_by_one_get(s3_bucket, monkeypatch):
    """open_seekable: reads that go on from the last one (a tar.gz streamed, a parquet column) come
    from READ_PART parts with READ_AHEAD more in flight; a read after a seek is one GET of what it
    asks. Whatever the pattern, the bytes are the object's."""
    import random

    from run_fixtures import CountingProxy

    import pipeline.storage.store as store_module

    monkeypatch.setattr(store_module, "READ_PART", 64 * 1024)
    data = os.urandom(2 * 1024 * 1024 + 17)
    open_store(s3_bucket).put("big.bin", data)
    with CountingProxy(os.environ["AWS_ENDPOINT_URL"], latency_s=0.02) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = open_store(s3_bucket)
        with store.open_seekable("big.bin", len(data)) as f:
            parts = []
            while chunk := f.read(10_000):
                parts.append(chunk)
        assert b"".join(parts) == data
        # the buffer's refills (1 MB, long against these parts): parts of 64 KiB, each fetched once,
        # several at once and never more than 1 + READ_AHEAD
        part = 64 * 1024
        assert sorted(r for _, r in proxy.gets) == sorted(f"bytes={a}-{min(a + part, len(data)) - 1}"
                                                          for a in range(0, len(data), part))
        assert 2 <= proxy.most_in_flight <= 1 + store_module.READ_AHEAD

        with store.open_seekable("big.bin", len(data)) as f:  # a footer: one GET of the rest, no parts
            f.seek(len(data) - 8)
            gets = len(proxy.gets)
            assert f.read(8) == data[-8:]
            assert proxy.gets[gets:] == [("/" + s3_bucket[5:] + "/big.bin", f"bytes={len(data) - 8}-{len(data) - 1}")]

        monkeypatch.setattr(store_module, "READ_PART", 512 * 1024)
        with store.open_seekable("big.bin", len(data)) as f:  # told where reading will stop: no parts past it
            store_module.read_ahead_to(f, 1_300_000)
            gets = len(proxy.gets)
            assert f.read(1 << 20) == data[:1 << 20]  # as pyarrow reads: 1 MB at a time
            ends = sorted(int(r.rsplit("-", 1)[1]) for _, r in proxy.gets[gets:])
            assert ends == [512 * 1024 - 1, 1024 * 1024 - 1, 1_300_000 - 1]  # not the 4th part, to 2 MB
        monkeypatch.setattr(store_module, "READ_PART", 64 * 1024)

        rng = random.Random(0)  # any pattern: the object's bytes (parts dropped on a seek may still land)
        with store.open_seekable("big.bin", len(data)) as f:
            for _ in range(60):
                if rng.random() < 0.3:
                    f.seek(rng.randrange(len(data) + 10))
                at, n = f.tell(), rng.choice([1, 1000, 100_000, 1 << 20, -1])
                assert (f.read(n) if n >= 0 else f.read()) == (data[at:at + n] if n >= 0 else data[at:])
