"""Dataset sources: the embedded corpus (rule, determinism, manifest, atomic build, corruption),
shard listing, and the FineWeb-Edu download against a local HTTP server."""

import hashlib
import http.server
import json
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm.data import corpus, fineweb
from llm.data.corpus import build_corpus, ensure_embedded_corpus, split_documents, stdlib_sources, verify_corpus
from llm.data.fineweb import download_fineweb_edu
from llm.data.paths import base_dir
from llm.data.shards import ShardReader, list_shards, split_shards

# Enough text for several shards at a small docs_per_shard, small enough to build in a second.
SOURCES = stdlib_sources()[:40]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_base_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_HOME", str(tmp_path / "home"))
    assert base_dir(str(tmp_path / "configured")) == tmp_path / "configured"
    assert base_dir() == tmp_path / "home"
    monkeypatch.delenv("LLM_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert base_dir() == tmp_path / "xdg" / "llm"


def test_stdlib_sources_are_the_standard_library():
    sources = stdlib_sources()
    assert len(sources) > 500
    assert sources == sorted(sources)
    names = {path.name for path in sources}
    assert {"os.py", "argparse.py", "typing.py"} <= names
    assert not any("site-packages" in path.parts for path in sources)
    assert not any(path.name.startswith("_sysconfigdata") for path in sources)


def test_documents_cut_at_top_level_definitions_and_keep_all_text():
    body = "    x = 1\n" * 200  # about 2,000 characters per definition
    text = "import os\n\n" + "".join(f"@decorator\ndef f{i}():\n{body}\n" for i in range(3)) + "class Tail:\n    pass\n"
    documents = split_documents(text)
    assert "".join(documents) == text
    assert len(documents) == 3
    assert documents[1].startswith("@decorator\ndef f1")  # the decorator stays with its function
    assert documents[-1].endswith("class Tail:\n    pass\n")  # the short tail joins the last document
    assert all(len(document) <= corpus.MAX_DOC_CHARS for document in documents)


def test_long_definitions_are_cut_at_blank_lines():
    text = "def huge():\n" + ("    y = 2\n" * 50 + "\n") * 40  # ~20,000 characters, no inner definitions
    documents = split_documents(text)
    assert "".join(documents) == text
    assert len(documents) >= 3
    assert all(len(document) <= corpus.MAX_DOC_CHARS for document in documents)
    assert all(document.endswith("\n\n") for document in documents[:-1])


def test_build_is_deterministic_with_a_complete_manifest(tmp_path):
    first = build_corpus(SOURCES, tmp_path / "a", docs_per_shard=64)
    second = build_corpus(SOURCES, tmp_path / "b", docs_per_shard=64)
    assert first == second
    for shard in first["shards"]:
        assert sha256(tmp_path / "a" / shard["name"]) == sha256(tmp_path / "b" / shard["name"]) == shard["sha256"]
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["python_version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert manifest["source_files"] == len(SOURCES)
    assert manifest["builder_version"] == corpus.BUILDER_VERSION
    shards = list_shards(tmp_path / "a")
    assert [path.name for path in shards] == [f"shard_{i:05d}.parquet" for i in range(len(manifest["shards"]))]
    assert len(shards) >= 3
    assert manifest["validation_shard"] == shards[-1].name

    reader = ShardReader(shards)
    texts = list(reader.iter_texts())
    assert len(texts) == manifest["documents"] == sum(shard["documents"] for shard in manifest["shards"])
    assert sum(map(len, texts)) == manifest["characters"]
    val_docs = manifest["shards"][-1]["documents"]
    assert 0 < val_docs <= 0.1 * manifest["documents"]
    for shard, path in zip(manifest["shards"], shards):
        assert pq.ParquetFile(path).metadata.num_row_groups == shard["row_groups"]
        assert shard["row_groups"] == min(corpus.ROW_GROUPS_PER_SHARD, shard["documents"])
    # Shuffled: the documents do not come in source-file order.
    in_order = [document for path in SOURCES for document in split_documents(corpus.read_source(path))]
    assert sorted(texts) == sorted(in_order) and texts != in_order


def test_ensure_builds_once_and_survives_a_stale_staging_dir(tmp_path, capsys):
    target = corpus.corpus_dir(tmp_path)
    stale = target.with_name(f".{target.name}.partial")
    stale.mkdir(parents=True)
    (stale / "shard_00000.parquet").write_bytes(b"half written")
    directory = ensure_embedded_corpus(tmp_path, sources=SOURCES)
    assert directory == target and not stale.exists()
    assert "building" in capsys.readouterr().out
    verify_corpus(directory, check_hashes=True)
    assert ensure_embedded_corpus(tmp_path, sources=SOURCES) == directory
    assert "building" not in capsys.readouterr().out
    assert [path.name for path in directory.iterdir() if path.name.startswith(".")] == []


def test_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        ensure_embedded_corpus(tmp_path, sources=[])
    target = corpus.corpus_dir(tmp_path)
    assert not target.exists() and not target.with_name(f".{target.name}.partial").exists()


def test_corrupt_or_missing_shard_names_the_fix(tmp_path):
    directory = ensure_embedded_corpus(tmp_path, sources=SOURCES)
    shard = directory / "shard_00000.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # same size: only the full hash check can see it
    shard.write_bytes(bytes(data))
    ensure_embedded_corpus(tmp_path, sources=SOURCES)
    with pytest.raises(ValueError, match=f"sha256.*delete {directory}"):
        verify_corpus(directory, check_hashes=True)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="wrong size.*delete"):
        ensure_embedded_corpus(tmp_path, sources=SOURCES)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="missing.*delete"):
        ensure_embedded_corpus(tmp_path, sources=SOURCES)


def test_shard_listing_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_shards(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no .parquet shards"):
        list_shards(tmp_path)
    (tmp_path / "shard_00000.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="at least 2 shards"):
        list_shards(tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        split_shards([tmp_path / "a", tmp_path / "b"], "test")


def test_missing_text_column_names_the_fix(tmp_path):
    manifest = build_corpus(SOURCES[:5], tmp_path, docs_per_shard=1000)
    reader = ShardReader(list_shards(tmp_path), text_column="content")
    with pytest.raises(ValueError, match="no column 'content'.*text column"):
        reader.read_row_group(0, 0)
    assert len(ShardReader(list_shards(tmp_path)).read_row_group(0, 0)) > 0
    assert manifest["shards"][0]["documents"] > 0


class _ShardServer(http.server.BaseHTTPRequestHandler):
    """Serves `files`; the first request for each name in `corrupt_once` gets a truncated body."""

    files: dict = {}
    corrupt_once: set = set()
    requests: list = []

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        self.requests.append(name)
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        if name in self.corrupt_once:
            self.corrupt_once.discard(name)
            body = body[: len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def shard_server(tmp_path):
    files = {}
    for index in (0, 1, 2, fineweb.LAST_SHARD):
        path = tmp_path / "remote" / fineweb.shard_name(index)
        path.parent.mkdir(exist_ok=True)
        pq.write_table(pa.table({"text": [f"document {index}-{row}" for row in range(5)]}), path)
        files[path.name] = path.read_bytes()
    handler = type("Handler", (_ShardServer,), {"files": files, "corrupt_once": set(), "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/datasets"
    server.shutdown()
    server.server_close()


def test_fineweb_download_retries_and_skips(tmp_path, shard_server):
    handler, url = shard_server
    handler.corrupt_once.add("shard_00001.parquet")
    base = tmp_path / "home"
    directory = download_fineweb_edu(base, 2, base_url=url, backoff_s=0.01)
    assert directory == base / "data" / "fineweb_edu"
    assert [path.name for path in list_shards(directory)] == ["shard_00000.parquet", "shard_00001.parquet",
                                                               "shard_01822.parquet"]
    assert sorted(handler.requests) == sorted(["shard_00000.parquet", "shard_00001.parquet",
                                               "shard_00001.parquet", "shard_01822.parquet"])
    assert not list(directory.glob("*.partial"))
    val = ShardReader(split_shards(list_shards(directory), "val"))
    assert val.read_row_group(0, 0)[0] == f"document {fineweb.LAST_SHARD}-0"

    handler.requests.clear()
    download_fineweb_edu(base, 3, base_url=url, backoff_s=0.01)
    assert handler.requests == ["shard_00002.parquet"]  # present shards are skipped


def test_fineweb_download_gives_up_clearly(tmp_path, shard_server):
    handler, url = shard_server
    del handler.files["shard_00000.parquet"]
    with pytest.raises(OSError, match="after 5 attempts.*run again"):
        download_fineweb_edu(tmp_path, 1, base_url=url, backoff_s=0.001)
    assert handler.requests.count("shard_00000.parquet") == 5
    assert not (fineweb.fineweb_dir(tmp_path) / "shard_00000.parquet").exists()
    with pytest.raises(ValueError, match="between 1 and 1822"):
        download_fineweb_edu(tmp_path, 0, base_url=url)
