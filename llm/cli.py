"""How every command line tool reports bad input: one line on stderr naming the fix, exit status 2."""

import sys
from contextlib import contextmanager


@contextmanager
def exit_on(*errors: type[BaseException], prog: str | None = None):
    """Turn `errors` raised inside the block into `[prog: ]error: <first line>` and exit status 2."""
    try:
        yield
    except errors as error:
        prefix = f"{prog}: " if prog else ""
        print(f"{prefix}error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        sys.exit(2)
