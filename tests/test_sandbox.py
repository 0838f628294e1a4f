"""The sandbox against every escape it is meant to contain, each tried for real (as root)."""

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

from llm.eval.sandbox import (DEVICES, KEPT_OUTPUT_CHARS, MAX_PROCESSES, OUTPUT_LIMIT_BYTES, SANDBOX_UIDS,
                              check_completion, humaneval_program, run_program)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (run_program refuses otherwise)")


def run(source: str, **limits):
    return run_program(textwrap.dedent(source), **limits)


def sandbox_processes() -> list[str]:
    """Every live process on the machine that runs under one of the sandbox's uids, as ps sees it."""
    table = subprocess.run(["ps", "-eo", "ruid=,pid=,stat="], capture_output=True, text=True, check=True)
    rows = [line.split() for line in table.stdout.splitlines()]
    return [pid for ruid, pid, stat in rows if int(ruid) in SANDBOX_UIDS and not stat.startswith("Z")]


def test_a_program_that_runs_to_its_end_passes_with_its_output():
    result = run("""
        print("to stdout")
        import sys; print("to stderr", file=sys.stderr)
    """)
    assert (result.passed, result.reason) == (True, "passed")
    assert result.stdout == "to stdout\n" and result.stderr == "to stderr\n"


def test_an_exception_or_an_early_exit_fails():
    assert run("assert 1 + 1 == 3").reason == "failed: AssertionError"
    assert "assert 1 + 1 == 3" in run("assert 1 + 1 == 3").stderr  # the program's traceback
    assert run("import sys; sys.exit(0)").reason == "failed: SystemExit"
    early = run("import os; os._exit(0)\nraise AssertionError")
    assert not early.passed and early.reason.startswith("failed: exited with status 0")


def test_an_infinite_loop_times_out_and_everything_it_started_is_killed():
    result = run("""
        import os, subprocess
        subprocess.Popen(["sleep", "300"])
        if os.fork() == 0:
            os.setsid()  # out of the process group: only the namespace and the uid sweep catch it
            while True:
                pass
        while True:
            pass
    """, timeout_s=1.0)
    assert (result.passed, result.reason) == (False, "timeout")
    assert sandbox_processes() == []


def test_processes_left_behind_by_a_finished_program_are_killed():
    assert run("import subprocess; subprocess.Popen(['sleep', '300'])").passed
    assert sandbox_processes() == []


def test_a_fork_bomb_hits_the_process_limit_and_leaves_nothing():
    bomb = run("""
        import os
        while True:
            os.fork()
    """)
    assert bomb.reason == "failed: BlockingIOError"
    stubborn = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout_s=1.0)
    assert stubborn.reason == "timeout"
    assert sandbox_processes() == []


def test_memory_beyond_the_limit_is_refused_and_below_it_is_granted():
    assert run("block = bytearray(400 << 20)", memory_mb=256).reason == "memory"
    assert run("block = bytearray(64 << 20)", memory_mb=256).passed


def test_the_limits_are_set_in_the_program():
    result = run(f"""
        import resource
        assert resource.getrlimit(resource.RLIMIT_AS) == ({300 << 20}, {300 << 20})
        assert resource.getrlimit(resource.RLIMIT_CPU) == (4, 4)  # ceil(timeout) + 1
        assert resource.getrlimit(resource.RLIMIT_NPROC) == ({MAX_PROCESSES}, {MAX_PROCESSES})
        assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == {OUTPUT_LIMIT_BYTES}
    """, timeout_s=2.5, memory_mb=300)
    assert result.passed, result.stderr


def test_endless_output_stops_at_the_output_limit():
    result = run("while True: print('x' * 1000)")
    assert result.reason == "output limit"
    assert len(result.stdout) == KEPT_OUTPUT_CHARS and set(result.stdout) <= {"x", "\n"}
    assert run(f"open('big', 'wb').write(bytes({2 * OUTPUT_LIMIT_BYTES}))").reason == "output limit"


def test_no_connection_reaches_a_listener_on_loopback():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # the listener does listen
            listener.accept()[0].close()
        result = run(f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=2)
        """)
        assert result.reason == "forbidden: [Errno 101] Network is unreachable"
        assert select.select([listener], [], [], 0.2)[0] == []  # nothing is waiting to be accepted


def test_writes_outside_the_working_directory_never_reach_the_host():
    name = f"sandbox-escape-{uuid.uuid4().hex}"
    inside = run(f"""
        import os
        open("{name}", "w").write("kept in the scratch directory")
        assert open("{name}").read() == "kept in the scratch directory"
        open("/tmp/{name}", "w").write("the sandbox's own /tmp")
        print(os.getcwd())
    """)
    assert inside.passed and inside.stdout == "/tmp\n"
    assert not Path(tempfile.gettempdir(), name).exists()
    for target in (REPO / name, Path("/dev", name), Path("/root", name)):
        outside = run(f"open('{target}', 'w').write('escaped')")
        # A checkout under /tmp is hidden by the sandbox's own /tmp rather than read-only.
        hidden = target.resolve().is_relative_to("/tmp") and outside.reason == "failed: FileNotFoundError"
        assert hidden or outside.reason.startswith("forbidden: [Errno 30] Read-only file system"), outside.reason
        assert not target.exists()


def test_the_program_sees_only_harmless_devices():
    result = run(f"""
        import os
        assert sorted(os.listdir("/dev")) == {sorted(Path(device).name for device in DEVICES)}
        open("/dev/null", "w").write("discarded")
        assert len(open("/dev/urandom", "rb").read(16)) == 16
    """)
    assert result.passed, result.stderr


def closed_home() -> Path | None:
    """The directory others cannot enter that holds this interpreter (pyenv under /root), if any."""
    for ancestor in reversed(Path(sys.base_prefix).resolve().parents):
        if not ancestor.stat().st_mode & 0o001:
            return ancestor
    return None


@pytest.mark.skipif(closed_home() is None, reason="this interpreter lies under no closed directory")
@pytest.mark.skipif(Path(sys.prefix).resolve().is_relative_to("/tmp"),
                    reason="the environment lies under /tmp, which the sandbox replaces with its scratch directory")
def test_a_closed_directory_holding_the_interpreter_shows_only_its_interpreter():
    home = closed_home()
    result = run(f"""
        import os, socket, json, numpy  # the standard library, its extensions, site-packages
        print(sorted(os.listdir("{home}")))
    """)
    assert result.passed, result.stderr
    on_the_way = {Path(entry).resolve().relative_to(home).parts[0] for entry in sys.path
                  if Path(entry).is_dir() and Path(entry).resolve().is_relative_to(home)}
    assert result.stdout == f"{sorted(on_the_way)}\n"  # not the keys and histories beside them


def test_the_program_cannot_regain_root_or_see_the_callers_processes():
    result = run(f"""
        import os
        assert os.getuid() != 0 and os.getgroups() == []
        assert os.getpid() == 1 and {os.getpid()} not in map(int, filter(str.isdigit, os.listdir("/proc")))
        os.setuid(0)
    """)
    assert result.reason == "forbidden: [Errno 1] Operation not permitted", result.stderr


def test_signals_cannot_reach_the_caller():
    named = run(f"import os, signal; os.kill({os.getpid()}, signal.SIGKILL)")
    assert named.reason == "failed: ProcessLookupError"  # the caller's pid names nothing in there
    # Its own process group holds the boot (root: refused) and itself (the namespace's init, which
    # ignores signals it has no handler for): nothing dies.
    group = run("import os, signal; os.kill(0, signal.SIGKILL)\nprint('still here')")
    assert group.passed and group.stdout == "still here\n"
    everyone = run("""
        import os, signal, subprocess
        child = subprocess.Popen(["sleep", "300"])
        os.kill(-1, signal.SIGKILL)  # every process it may signal: only its own namespace's
        print(child.wait())
    """)
    assert everyone.passed and everyone.stdout == "-9\n"
    os.kill(os.getpid(), 0)  # and here we still are


def test_the_callers_environment_does_not_reach_the_program(monkeypatch):
    monkeypatch.setenv("LLM_SANDBOX_TEST_SECRET", "hunter2")
    result = run("""
        import glob, os
        print(os.environ)
        for path in glob.glob("/proc/*/environ"):
            try:
                print(open(path, "rb").read())
            except OSError:
                pass
    """)
    assert result.passed and "PATH" in result.stdout
    assert "hunter2" not in result.stdout and "LLM_SANDBOX_TEST_SECRET" not in result.stdout


def test_limits_that_allow_nothing_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        run_program("print(1)", timeout_s=0)


def test_the_callers_scratch_files_are_removed():
    before = set(Path(tempfile.gettempdir()).glob("llm-sandbox-*"))
    run("print('x')")
    run("while True: pass", timeout_s=0.5)
    assert set(Path(tempfile.gettempdir()).glob("llm-sandbox-*")) <= before


PROMPT = '''from typing import List


def running_max(values: List[int]) -> List[int]:
    """The largest value seen so far, at every position."""
'''
TEST = '''
def check(candidate):
    assert candidate([1, 3, 2, 5]) == [1, 3, 3, 5]
    assert candidate([]) == []
'''
RIGHT = '''Here is the function:
```python
def running_max(values: List[int]) -> List[int]:
    out, best = [], None
    for value in values:
        best = value if best is None else max(best, value)
        out.append(best)
    return out
```
It keeps the best value so far.'''


def test_humaneval_programs_are_assembled_and_judged():
    program = humaneval_program(PROMPT, RIGHT, TEST, "running_max")
    assert program.startswith("from typing import List\n\ndef running_max(")
    assert "It keeps" not in program and program.endswith("check(running_max)")
    assert check_completion(PROMPT, RIGHT, TEST, "running_max").passed
    wrong = RIGHT.replace("max(best, value)", "value")
    assert check_completion(PROMPT, wrong, TEST, "running_max").reason == "failed: AssertionError"
    bare = "def running_max(values):\n    return sorted(values)"  # no fence: the whole completion
    assert check_completion(PROMPT, bare, TEST, "running_max").reason == "failed: AssertionError"
