import json
import os
import time

import pytest

from audio_fixtures import tone, write_manifest_corpus
from corpus_layouts import upload
import data_prep.sources.base as base
import pipeline.storage.store as store
from data_prep.sources import FETCH_AHEAD, SourceError, detect_format, read_items, scan_sources
from run_fixtures import CountingProxy
import soundfile as sf


def _wav(path, seconds=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, 16000), 16000)


def test_folder_recursive_takes_every_audio_extension(tmp_path):
    _wav(tmp_path / "f" / "a.wav")
    _wav(tmp_path / "f" / "deep" / "b.WAV")
    (tmp_path / "f" / "notes.txt").write_text("ignored")
    (tmp_path / "f" / "c.m4a").write_bytes(b"x")  # FFmpeg's to decode (or reject) in a worker
    scan = scan_sources([str(tmp_path / "f")])
    assert [i.name for i in scan.items] == ["f/a.wav", "f/c.m4a", "f/deep/b.WAV"]
    assert scan.rejects == []


def test_manifest_tsv_csv_jsonl(tmp_path):
    manifest = write_manifest_corpus(tmp_path, n_files=3, n_speakers=2)
    scan = scan_sources([str(manifest)])
    assert [i.speaker for i in scan.items] == ["spk0", "spk0", "spk1"]  # sorted by name
    assert scan.items[0].text == "వాక్యం 0"
    (tmp_path / "m.csv").write_text("path,text,speaker\nwavs/spk0/utt000.wav,hi,s\nmissing.wav,x,s\n")
    scan = scan_sources([str(tmp_path / "m.csv")])
    assert len(scan.items) == 1 and "not found" in scan.rejects[0]["reason"]
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "wavs/spk1/utt001.wav"}) + "\n")
    assert scan_sources([str(tmp_path / "m.jsonl")]).items[0].speaker == ""


def test_manifest_without_path_column(tmp_path):
    (tmp_path / "bad.tsv").write_text("file\ttext\nx.wav\thi\n")
    with pytest.raises(SourceError, match="needs a 'path' column"):
        scan_sources([str(tmp_path / "bad.tsv")])


def test_openslr_layout_with_stray_middle_field(tmp_path):
    root = tmp_path / "te_in_female"
    _wav(root / "tef_01234_00012345.wav")
    _wav(root / "tef_05678_00099999.wav")
    (root / "line_index.tsv").write_text("tef_01234_00012345\t\tమొదటి వాక్యం\n"
                                         "tef_05678_00099999\tరెండవ వాక్యం\n"
                                         "tef_00000_00000000\t\tలేని ఫైలు\n", encoding="utf-8")
    assert detect_format(root) == "openslr"
    scan = scan_sources([str(root)])
    assert [(i.speaker, i.text) for i in scan.items] == [("tef_01234", "మొదటి వాక్యం"), ("tef_05678", "రెండవ వాక్యం")]
    assert len(scan.rejects) == 1 and "line_index.tsv line 3" in scan.rejects[0]["reason"]


def test_commonvoice_layout(tmp_path):
    root = tmp_path / "cv-te"
    (root / "clips").mkdir(parents=True)
    sf.write(root / "clips" / "common_voice_te_1.mp3", tone(1.5, 16000), 16000, format="MP3")
    (root / "validated.tsv").write_text("client_id\tpath\tsentence\nabc123\tcommon_voice_te_1.mp3\tనమస్కారం\n",
                                        encoding="utf-8")
    assert detect_format(root) == "commonvoice"
    (item,) = scan_sources([str(root)]).items
    assert item.speaker == "abc123" and item.text == "నమస్కారం" and item.path.endswith(".mp3")


def test_missing_source_and_duplicate(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        scan_sources([str(tmp_path / "nope")])
    _wav(tmp_path / "f" / "a.wav")
    with pytest.raises(SourceError, match="listed twice"):
        scan_sources([str(tmp_path / "f"), str(tmp_path / "f")])


def test_a_workers_remote_files_are_fetched_several_at_once_and_come_out_in_order(tmp_path, s3_bucket, monkeypatch):
    """Each GET waits 0.2 s at a proxy (a far store): the files of a job are fetched on threads, up
    to FETCH_AHEAD ahead of the one being prepped, and handed out in the job's order."""
    manifest = write_manifest_corpus(tmp_path / "c", n_files=FETCH_AHEAD + 4, n_speakers=3, seconds=0.5)
    remote = upload(tmp_path / "c", f"{s3_bucket}/c")
    items = scan_sources([f"{remote}/manifest.tsv"]).items
    with CountingProxy(os.environ["AWS_ENDPOINT_URL"], latency_s=0.2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        got = [(item.name, name, f.read()) for item, f, name in read_items(items)]
    assert [(name, file) for name, file, _ in got] == [(i.name, i.path.rsplit("/", 1)[1]) for i in items]
    assert [data for _, _, data in got] == [(manifest.parent / i.path[len(remote) + 1:]).read_bytes() for i in items]
    assert proxy.most_in_flight == FETCH_AHEAD  # as many GETs waiting at once, never more


def test_a_worker_makes_one_s3_client_however_many_threads_fetch_at_once(tmp_path, s3_bucket, monkeypatch):
    """A worker's fetching threads all want the bucket's store on its first job: one client is made
    (a client costs ~0.1 s of CPU; here each takes 0.3 s, so the threads ask while it is made)."""
    write_manifest_corpus(tmp_path / "c", n_files=8, n_speakers=2, seconds=0.5)
    remote = upload(tmp_path / "c", f"{s3_bucket}/c")
    items = scan_sources([f"{remote}/manifest.tsv"]).items
    made, make = [], store.s3_client

    def slow_client():
        made.append(1)
        time.sleep(0.3)
        return make()

    monkeypatch.setattr(store, "s3_client", slow_client)
    base._bucket.cache_clear()  # a worker's first job
    read = 0
    for _, f, _ in read_items(items):
        read += len(f.read()) > 0
        f.close()
    assert read == 8 and len(made) == 1
