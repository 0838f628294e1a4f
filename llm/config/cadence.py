"""When a periodic action of the loop is due: one meaning for every `*every` key.

`eval.every`, `eval.core_every`, `eval.sample_every` and `checkpoint.every` are all cadences:

    N > 0   every N steps (counting from step 0) and at the last step
    0       only at the last step
    -1      never

The checkpoint written at the last step, and the one written when a run is told to stop, do not
depend on `checkpoint.every`: a finished or preempted run always leaves its state on disk.
"""

EVERY_END_ONLY = 0
NEVER = -1


def is_due(every: int, step: int, last_step: int) -> bool:
    """Whether an action with cadence `every` runs at `step` of a run that ends at `last_step`."""
    if every == NEVER:
        return False
    return step == last_step or (every > 0 and step % every == 0)


def invalid_cadence(key: str, every: int) -> str | None:
    """The one-line complaint about a cadence value, or None when it is valid."""
    if every < NEVER:
        return f"{key}={every} is not a cadence: use N > 0 (every N steps and at the end), 0 (only at the end) or -1 (never)"
    return None
