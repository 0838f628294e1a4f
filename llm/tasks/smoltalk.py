"""SmolTalk (HuggingFaceTB/smol-smoltalk): general conversations; train 460K rows, test 24K.

Real data only, from the Hub; offline, `llm.tasks.chatterbot` stands in under its own name.
"""

from llm.tasks.base import Conversation, Task, TaskError, message_problem
from llm.tasks.sources import HUB_ENDPOINT, HubSplit, hub_rows


class SmolTalk(Task):
    name = "smoltalk"

    def __init__(self, split: str, base: str | None = None, endpoint: str = HUB_ENDPOINT, **view):
        super().__init__(**view)
        self.use_split(split)
        self.rows = hub_rows(HubSplit("HuggingFaceTB/smol-smoltalk", "data", split), base, endpoint)

    def get_example(self, index: int) -> Conversation:
        messages = self.rows[index]["messages"]
        problem = message_problem(messages, allow_system=True)
        if problem:
            raise TaskError(f"smoltalk row {index}: {problem}")
        return {"messages": messages}
