"""The real-data download path of the chat tasks, against a Hub-shaped HTTP server on 127.0.0.1.

The server answers the two requests the download makes: the tree listing of a dataset folder
(`/api/datasets/<repo>/tree/main/<folder>`, each file with its size and sha256 or git blob id) and
the file itself (`/datasets/<repo>/resolve/main/<path>`). Files are small parquet tables written
here in each dataset's columns.
"""

import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm.tasks.arc import ARC
from llm.tasks.gsm8k import GSM8K
from llm.tasks.humaneval import HumanEval
from llm.tasks.mmlu import MMLU
from llm.tasks.smoltalk import SmolTalk
from llm.tasks.sources import HubSplit, hub_split_files, url_file
from tests.conftest import stage_mixture


def parquet_bytes(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


class FakeHub:
    """Serves `files` ({repo: {path: bytes}}); `listed` overrides the bytes a listing describes,
    `failures` makes the first N downloads of a path answer 500."""

    def __init__(self):
        self.files: dict[str, dict[str, bytes]] = {}
        self.listed: dict[tuple[str, str], bytes] = {}
        self.failures: dict[str, int] = {}
        self.requests: list[str] = []
        self.use_lfs = True  # the Hub keeps parquet files in LFS (sha256); False: plain git blobs
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.requests.append(self.path)
                status, body = hub.answer(self.path.split("?")[0])
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def entry(self, repo: str, path: str) -> dict:
        content = self.listed.get((repo, path), self.files[repo][path])
        blob = hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest()
        entry = {"type": "file", "path": path, "size": len(content), "oid": blob}
        if self.use_lfs and path.endswith(".parquet"):
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 130}
        return entry

    def answer(self, path: str) -> tuple[int, bytes]:
        for repo, files in self.files.items():
            tree = f"/api/datasets/{repo}/tree/main/"
            if path.startswith(tree):
                folder = path[len(tree):]
                listing = [self.entry(repo, name) for name in files if name.startswith(folder + "/")]
                return 200, json.dumps(listing).encode()
            resolve = f"/datasets/{repo}/resolve/main/"
            if path.startswith(resolve) and path[len(resolve):] in files:
                name = path[len(resolve):]
                if self.failures.get(name, 0) > 0:
                    self.failures[name] -= 1
                    return 500, b"try again"
                return 200, files[name]
        return 404, b"not found"

    def downloads(self, name: str) -> int:
        return sum(request.endswith(name) and "/resolve/" in request for request in self.requests)


@pytest.fixture
def hub():
    server = FakeHub()
    yield server
    server.server.shutdown()


def smoltalk_rows(count: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(count)]


def test_a_split_downloads_checks_and_then_works_offline(hub, tmp_path):
    repo = "HuggingFaceTB/smol-smoltalk"
    hub.files[repo] = {"data/train-00000-of-00002.parquet": parquet_bytes(smoltalk_rows(3)),
                       "data/train-00001-of-00002.parquet": parquet_bytes(smoltalk_rows(5)[3:]),
                       "data/test-00000-of-00001.parquet": parquet_bytes(smoltalk_rows(1)),
                       "data/README.txt": b"not parquet"}
    train = SmolTalk("train", base=str(tmp_path), endpoint=hub.url)
    # Both train shards, concatenated in name order, in the reference's shuffle (numpy default_rng(42)).
    order = np.random.default_rng(42).permutation(5)
    assert [train[i]["messages"][1]["content"] for i in range(len(train))] == [f"question {j}" for j in order]
    assert train.trainable and not SmolTalk("test", base=str(tmp_path), endpoint=hub.url).trainable
    assert hub.downloads("README.txt") == 0
    # A deleted file is fetched again (and only it); the other shard is checked, not downloaded.
    (HubSplit(repo, "data", "train").local_dir(str(tmp_path)) / "train-00001-of-00002.parquet").unlink()
    assert len(SmolTalk("train", base=str(tmp_path), endpoint=hub.url)) == 5
    assert (hub.downloads("train-00000-of-00002.parquet"), hub.downloads("train-00001-of-00002.parquet")) == (1, 2)
    # The manifest marks the split complete: a later load asks the server nothing.
    hub.server.shutdown()
    assert len(SmolTalk("train", base=str(tmp_path), endpoint=hub.url)) == 5


def test_a_failed_download_is_retried(hub, tmp_path):
    repo = "openai/gsm8k"
    answer = "Half of 12 is <<12/2=6>>6.\n#### 6"
    hub.files[repo] = {"main/train-00000-of-00001.parquet": parquet_bytes([{"question": "Half of 12?", "answer": answer}])}
    hub.failures["main/train-00000-of-00001.parquet"] = 2
    hub_split_files(HubSplit(repo, "main", "train"), str(tmp_path), hub.url, backoff_s=0)
    assert hub.downloads("train-00000-of-00001.parquet") == 3
    task = GSM8K("main", "train", base=str(tmp_path), endpoint=hub.url)
    conversation = task[0]
    assert conversation["messages"][1]["content"][1:3] == [{"type": "python", "text": "12/2"},
                                                            {"type": "python_output", "text": "6"}]
    assert task.evaluate(conversation, "so #### 6") == 1 and task.evaluate(conversation, "#### 7") == 0


def test_a_corrupted_file_is_rejected_and_nothing_is_kept(hub, tmp_path):
    repo, name = "allenai/ai2_arc", "ARC-Easy/train-00000-of-00001.parquet"
    good = parquet_bytes([{"question": "q", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"}])
    hub.files[repo] = {name: good[:-10] + b"0123456789"}  # same size, wrong bytes
    hub.listed[(repo, name)] = good
    split = HubSplit(repo, "ARC-Easy", "train")
    with pytest.raises(OSError, match="after 5 attempts"):
        hub_split_files(split, str(tmp_path), hub.url, backoff_s=0)
    assert list(split.local_dir(str(tmp_path)).iterdir()) == [split.local_dir(str(tmp_path)) / ".download.lock"]
    hub.files[repo][name] = good  # the server is fixed: the next run completes
    task = ARC("ARC-Easy", "train", base=str(tmp_path), endpoint=hub.url)
    assert task.name == "arc_easy" and task[0]["messages"][1]["content"] == "B" and task[0]["letters"] == ["A", "B"]


def test_files_outside_lfs_are_checked_by_git_blob_id(hub, tmp_path):
    hub.files["cais/mmlu"] = {"auxiliary_train/train-00000-of-00001.parquet": parquet_bytes(
        [{"train": {"question": "2+2?", "subject": "", "choices": ["1", "2", "3", "4"], "answer": 3}}])}
    hub.use_lfs = False
    task = MMLU("auxiliary_train", "train", source="hub", base=str(tmp_path), endpoint=hub.url)
    assert task.name == "mmlu_auxiliary_train" and task.trainable
    assert task[0]["messages"][1]["content"] == "D" and "- 4=D\n" in task[0]["messages"][0]["content"]


def test_humaneval_from_the_hub_matches_the_package_format(hub, tmp_path):
    row = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
           "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    hub.files["openai/openai_humaneval"] = {"openai_humaneval/test-00000-of-00001.parquet": parquet_bytes([row])}
    conversation = HumanEval(source="hub", base=str(tmp_path), endpoint=hub.url)[0]
    assert conversation["messages"][1]["content"] == "def f():\n\n    return 1\n"
    assert conversation["entry_point"] == "f"


def test_a_missing_split_names_itself(hub, tmp_path):
    hub.files["openai/gsm8k"] = {"main/train-00000-of-00001.parquet": b"x"}
    with pytest.raises(ValueError, match="no test-\\*.parquet under main/"):
        GSM8K("main", "test", base=str(tmp_path), endpoint=hub.url)


def test_a_single_file_is_checked_by_content(tmp_path, hub):
    hub.files["x/y"] = {"lists/words.txt": b"apple\nBanana!\n"}
    url = f"{hub.url}/datasets/x/y/resolve/main/lists/words.txt"
    with pytest.raises(OSError, match="damaged"):
        url_file(url, str(tmp_path), is_valid=lambda path: path.read_text().split() == ["apple", "banana"], backoff_s=0)
    assert not any(path.suffix in (".txt", ".partial") for path in (tmp_path / "data" / "tasks").iterdir())
    hub.files["x/y"]["lists/words.txt"] = b"apple\nbanana\n"
    path = url_file(url, str(tmp_path), is_valid=lambda path: path.read_text().split() == ["apple", "banana"], backoff_s=0)
    assert path.read_text() == "apple\nbanana\n"


def test_the_reference_stage_mixtures_compose_from_downloaded_files(tmp_path):
    """Downloaded splits (parquet + manifest) and word list in place: the stages build with no network."""
    from llm.tasks.spelling import DWYL_URL
    from llm.tasks.sources import tasks_home, write_atomically
    mc = {"question": "q", "subject": "s", "choices": ["1", "2", "3", "4"], "answer": 0}
    arc = {"question": "q", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "A"}
    gsm = {"question": "q", "answer": "<<1+1=2>>2\n#### 2"}
    splits = {("HuggingFaceTB/smol-smoltalk", "data", "train"): smoltalk_rows(12),
              ("HuggingFaceTB/smol-smoltalk", "data", "test"): smoltalk_rows(4),
              ("cais/mmlu", "auxiliary_train", "train"): [{"train": mc}] * 5, ("cais/mmlu", "all", "test"): [mc] * 6,
              ("openai/gsm8k", "main", "train"): [gsm] * 3, ("openai/gsm8k", "main", "test"): [gsm] * 2,
              ("allenai/ai2_arc", "ARC-Easy", "train"): [arc] * 2, ("allenai/ai2_arc", "ARC-Challenge", "train"): [arc]}
    for (repo, folder, split), rows in splits.items():
        directory = HubSplit(repo, folder, split).local_dir(str(tmp_path))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{split}-00000-of-00001.parquet").write_bytes(parquet_bytes(rows))
        write_atomically(directory / f"{split}.manifest.json", json.dumps({"files": [f"{split}-00000-of-00001.parquet"]}))
    words = ["apple", "banana", "cherry"] * 100_001  # what the content check expects of words_alpha.txt
    write_atomically(tasks_home(str(tmp_path)) / DWYL_URL.rsplit("/", 1)[-1], "\r\n".join(words) + "\r\n")
    mid, mid_validation = stage_mixture("reference_mid", str(tmp_path))
    assert [task.name for task in mid.tasks] == ["smoltalk", "mmlu_auxiliary_train", "gsm8k", "identity", "identity",
                                                 "simple_spelling", "spellingbee"]
    assert len(mid) == 12 + 5 + 3 + 2_000 + 280_000 and len(mid_validation) == 4 + 6 + 2
    sft, sft_validation = stage_mixture("reference_sft", str(tmp_path))
    assert [task.name for task in sft.tasks][:2] == ["arc_easy", "arc_challenge"]
    assert len(sft) == 2 + 1 + 3 + 12 + 1_000 + 600 and sft_validation.name == "smoltalk"
