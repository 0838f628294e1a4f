"""The CORE evaluation bundle: its on-disk layout, and fetching the real one.

A bundle is a directory laid out as DCLM's (and the reference's) eval_bundle:

    DIR/core.yaml              icl_tasks: a list of {label, icl_task_type, dataset_uri, num_fewshot: [k],
                               continuation_delimiter (default " ")}
    DIR/eval_data/<uri>        one JSON object per line, one example per line
    DIR/eval_meta_data.csv     one row per task: "Eval Task" (the label) and "Random baseline" (percent)

Task types and the fields of their examples:
    multiple_choice    query, choices, gold      one context, several continuations
    schema             context_options, continuation, gold      several contexts, one continuation
    language_modeling  context, continuation     the greedy continuation must match exactly

The real bundle (about 162 MB zipped) is downloaded once into the data home; any directory in the
same layout can stand in for it.
"""

import csv
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from llm.config.derived import ConfigError
from llm.data.download import download
from llm.data.paths import exclusive_lock

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
CORE_BUNDLE_DIR = "eval_bundle"  # under the data home, as in the reference
TASK_LIST = "core.yaml"
DATA_DIR = "eval_data"
META_DATA = "eval_meta_data.csv"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")


@dataclass(frozen=True)
class Task:
    label: str
    task_type: str
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # accuracy of guessing, in percent
    data_path: Path

    def examples(self) -> list[dict]:
        with open(self.data_path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


def load_bundle(directory: str | os.PathLike) -> list[Task]:
    """The tasks of a bundle directory, in the order core.yaml lists them; examples are read on demand."""
    directory = Path(directory)
    layout = f"a bundle directory holds {TASK_LIST}, {DATA_DIR}/ and {META_DATA}"
    for required in (TASK_LIST, DATA_DIR, META_DATA):
        if not (directory / required).exists():
            raise FileNotFoundError(f"{directory / required} is missing: {layout}")
    listed = yaml.safe_load((directory / TASK_LIST).read_text(encoding="utf-8")) or {}
    with open(directory / META_DATA, encoding="utf-8", newline="") as handle:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(handle)}
    tasks = []
    for entry in listed.get("icl_tasks") or []:
        label, task_type = entry["label"], entry["icl_task_type"]
        if task_type not in TASK_TYPES:
            raise ConfigError(f"task {label} in {directory / TASK_LIST} has type {task_type!r}; "
                              f"CORE scores only {', '.join(TASK_TYPES)}")
        if label not in baselines:
            raise ConfigError(f"task {label} has no row in {directory / META_DATA}: add its random baseline")
        data_path = directory / DATA_DIR / entry["dataset_uri"]
        if not data_path.is_file():
            raise FileNotFoundError(f"{data_path} (the data of task {label}) is missing: {layout}")
        tasks.append(Task(label, task_type, int(entry["num_fewshot"][0]),
                          entry.get("continuation_delimiter", " "), baselines[label], data_path))
    if not tasks:
        raise ConfigError(f"{directory / TASK_LIST} lists no icl_tasks")
    return tasks


def write_bundle(directory: Path, tasks: list[dict]) -> None:
    """Write tasks in the bundle layout. Each task: label, task_type, num_fewshot, continuation_delimiter,
    random_baseline, category, examples. Byte-identical output for equal input."""
    (directory / DATA_DIR).mkdir(parents=True, exist_ok=True)
    listed = []
    for task in tasks:
        uri = f"{task['label']}.jsonl"
        with open(directory / DATA_DIR / uri, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(example, sort_keys=True) + "\n" for example in task["examples"])
        listed.append({"label": task["label"], "dataset_uri": uri, "num_fewshot": [task["num_fewshot"]],
                       "icl_task_type": task["task_type"],
                       "continuation_delimiter": task["continuation_delimiter"]})
    (directory / TASK_LIST).write_text(yaml.safe_dump({"icl_tasks": listed}, sort_keys=False), encoding="utf-8")
    with open(directory / META_DATA, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "Random baseline"])
        for task in tasks:
            writer.writerow([task["label"], task["category"], task["task_type"], task["num_fewshot"],
                             task["random_baseline"]])


def ensure_core_bundle(base: Path, url: str = EVAL_BUNDLE_URL, backoff_s: float = 2.0) -> Path:
    """The real CORE bundle under the data home, downloaded and unpacked on first use.

    Ranks and jobs asking at once wait on a lock while one downloads. The archive is unpacked next to
    its final place and renamed into it, so the bundle directory is complete or absent, never partial.
    """
    base = Path(base)
    target = base / CORE_BUNDLE_DIR
    with exclusive_lock(base / f".{CORE_BUNDLE_DIR}.lock"):
        if target.exists():
            return target
        archive = base / f"{CORE_BUNDLE_DIR}.zip"
        print(f"core: downloading {url}")
        download(url, archive, backoff_s, "core",
                 "check the network, or pass eval.bundle=DIR (a local bundle) or eval=offline")
        try:  # the archive goes either way: a bad one must be fetched again, a good one is unpacked
            with tempfile.TemporaryDirectory(dir=base, prefix=f".{CORE_BUNDLE_DIR}.") as unpack:
                with zipfile.ZipFile(archive) as zipped:
                    zipped.extractall(unpack)
                unpacked = Path(unpack) / CORE_BUNDLE_DIR
                if not (unpacked / TASK_LIST).is_file():
                    raise OSError(f"{url} holds no {CORE_BUNDLE_DIR}/{TASK_LIST}: it is not a CORE eval bundle")
                os.replace(unpacked, target)
        except zipfile.BadZipFile as error:
            raise OSError(f"{url} did not give a zip archive ({error}); run again to re-download") from None
        finally:
            archive.unlink()
        print(f"core: placed the eval bundle at {target}")
    return target


