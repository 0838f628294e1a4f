"""Run a model-written Python program and say whether it passed, without letting it touch anything.

HumanEval scores a completion by running it against its tests. The program is untrusted: it may
loop forever, allocate without bound, print without end, fork without end, write anywhere, open
sockets, signal other processes or read secrets from the environment. Each run gets:

- a fresh interpreter (this file run as a script with `python -I`), never a fork of a process that
  holds a model, started in its own session so that the whole group can be killed;
- a private mount namespace where every mount is read-only, /dev holds only null, zero, full and
  the random devices, directories others cannot enter stay closed, and /tmp is a small private
  tmpfs that is the working directory (nothing the program writes reaches the host's disk, and it
  is gone when the run ends);
- a network namespace with no interfaces up (not even loopback): no connection to anything;
- a PID namespace with a fresh /proc: the program sees only its own processes and cannot name the
  caller's; when it ends, the kernel kills whatever it left behind;
- an unprivileged uid and gid of its own (a random one from a range no account uses, so that the
  per-user process limit counts this run alone and runs cannot signal each other), no
  supplementary groups, no_new_privs (setuid binaries cannot give root back);
- rlimits on address space and data (memory), CPU seconds, processes and threads (fork bombs),
  file size (captured output and files alike) and core dumps; a wall-clock timeout in the caller;
- an environment of a few fixed variables: nothing of the caller's.

The namespaces and the uid change need root (CI and the dev machines here run as root); elsewhere
run_program refuses with one line rather than run unconfined.

A program passes when it runs to its end: an exception, an early exit (sys.exit, os._exit), a
signal or any limit is a failure. The runner reports from the program's own process, so a program
that deliberately writes a forged verdict to the runner's report file is not defended against.
"""

import contextlib
import ctypes
import errno
import json
import math
import os
import re
import resource
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

OUTPUT_LIMIT_BYTES = 1 << 20  # largest file (stdout and stderr included) a program may write
KEPT_OUTPUT_CHARS = 10_000  # how much of stdout and stderr an ExecutionResult keeps
MAX_PROCESSES = 32  # processes and threads of one run (RLIMIT_NPROC of its own uid)
SCRATCH_MB = 64  # size of the private /tmp
SANDBOX_UIDS = range(1 << 30, (1 << 30) + (1 << 24))  # no account lives here
SCRATCH = "/tmp"  # the working directory, as the program sees it
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")  # all of its /dev
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": SCRATCH, "TMPDIR": SCRATCH, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
SETUP_FAILED = "sandbox setup failed:"  # the boot's report when it could not build the sandbox
KILL_GRACE_S = 5.0  # how long the caller waits for killed processes to go

# Linux constants that the os module of Python 3.11 does not expose.
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # how /proc/self/mountinfo writes spaces, tabs, newlines
FORBIDDEN_ERRNOS = {errno.EPERM, errno.EACCES, errno.EROFS, errno.ENETUNREACH}  # the sandbox's walls


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    reason: str  # passed, failed: <Exception>, forbidden: <what>, timeout, cpu time, memory, output limit, killed: <signal>
    stdout: str  # the first KEPT_OUTPUT_CHARS characters
    stderr: str


def run_program(program: str, timeout_s: float = 5.0, memory_mb: int = 512) -> ExecutionResult:
    """Run `program` as __main__ in the sandbox; passed when it ran to its end within every limit."""
    if os.geteuid() != 0:
        raise PermissionError("the sandbox needs root for its namespaces and uid change: run as root")
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout_s and memory_mb must be positive, not {timeout_s} and {memory_mb}")
    uid = SANDBOX_UIDS[secrets.randbelow(len(SANDBOX_UIDS))]
    config = {"program": program, "uid": uid, "memory_bytes": memory_mb << 20,
              "cpu_s": math.ceil(timeout_s) + 1}
    with tempfile.TemporaryDirectory(prefix="llm-sandbox-") as private:  # mode 0700: the caller's
        paths = {name: Path(private, name) for name in ("stdout", "stderr", "report")}
        files = {name: open(path, "wb") for name, path in paths.items()}
        config["report_fd"] = files["report"].fileno()
        try:
            boot = subprocess.Popen(
                [sys.executable, "-I", __file__], stdin=subprocess.PIPE, stdout=files["stdout"],
                stderr=files["stderr"], pass_fds=[files["report"].fileno()], env=ENVIRONMENT,
                cwd="/", start_new_session=True)
        finally:
            for file in files.values():
                file.close()
        timed_out = False
        try:
            boot.stdin.write(json.dumps(config).encode())
            boot.stdin.close()
            boot.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # an interrupted caller leaves nothing running either
            _end_run(boot, uid)
        stdout, stderr = (paths[name].read_bytes() for name in ("stdout", "stderr"))
        report = paths["report"].read_text(errors="replace").splitlines()
    reason = _reason(timed_out, max(len(stdout), len(stderr)), report, boot.returncode)
    return ExecutionResult(reason == "passed", reason, _kept(stdout), _kept(stderr))


def _end_run(boot: subprocess.Popen, uid: int) -> None:
    """Kill every process of the run and return only once none is left."""
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        if boot.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(boot.pid, signal.SIGKILL)  # the boot's session: all that did not setsid
        survivors = _processes_of(uid)  # the rest, wherever they went
        if not survivors and boot.returncode is not None:
            return
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
        boot.poll()
    raise RuntimeError(f"sandbox uid {uid} still has processes {_processes_of(uid)} after SIGKILL")


def _processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is `uid`; /proc/PID owners lie after setuid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path("/proc", entry, "status").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


def _reason(timed_out: bool, largest_output: int, report: list[str], returncode: int) -> str:
    if timed_out:
        return "timeout"
    if largest_output >= OUTPUT_LIMIT_BYTES:
        return "output limit"
    if report and report[-1].startswith(SETUP_FAILED):
        raise RuntimeError(report[-1])
    if report:
        return report[-1]
    return f"failed: exited with status {returncode} before the end of the program"


def _kept(output: bytes) -> str:
    return output.decode(errors="replace")[:KEPT_OUTPUT_CHARS]


# ----------------------------------------------------------------------------------------------
# HumanEval: the program is the prompt's imports, the completion's code, the tests, check(entry).

CODE_BLOCK = re.compile(r"```(?:python)?\s*\n(.*?)\n```", re.DOTALL)


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The completion usually restates the whole function but not always its imports: prepend
    the prompt's leading imports; a fenced code block, if any, is the code (the first one)."""
    imports = []
    for line in prompt.splitlines():
        line = line.strip()
        if line.startswith(("import ", "from ")):
            imports.append(line)
        elif line and not line.startswith("#"):
            break
    block = CODE_BLOCK.search(completion)
    code = (block.group(1) if block else completion).strip()
    return "\n".join(imports) + "\n\n" + code + "\n\n" + test + "\n" + f"check({entry_point})"


def check_completion(prompt: str, completion: str, test: str, entry_point: str,
                     timeout_s: float = 5.0, memory_mb: int = 512) -> ExecutionResult:
    return run_program(humaneval_program(prompt, completion, test, entry_point), timeout_s, memory_mb)


# ----------------------------------------------------------------------------------------------
# Inside the sandbox: this file run by a fresh interpreter, as root until the program starts.

def _boot() -> None:
    config = json.loads(sys.stdin.buffer.read())
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    report = os.fdopen(config.pop("report_fd"), "w", buffering=1)
    libc = ctypes.CDLL(None, use_errno=True)
    with _reporting_setup_failure(report):
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
        _seal_filesystem(libc, config["uid"])
    alive_read, alive_write = os.pipe()  # EOF on alive_read tells the program the boot is gone
    pid = os.fork()  # the child is PID 1 of the new namespace
    if pid == 0:
        os.close(alive_write)
        with _reporting_setup_failure(report):
            _confine(libc, config, alive_read)
        _execute(config["program"], report)
    _, status, usage = os.wait4(pid, 0)
    if os.WIFSIGNALED(status):
        killer = os.WTERMSIG(status)
        used_cpu = usage.ru_utime + usage.ru_stime >= config["cpu_s"]
        report.write("cpu time\n" if used_cpu else f"killed: {signal.Signals(killer).name}\n")
        os._exit(128 + killer)
    os._exit(os.WEXITSTATUS(status))


@contextlib.contextmanager
def _reporting_setup_failure(report):
    """A sandbox that cannot be built is the caller's error, not a failure of the program."""
    try:
        yield
    except OSError as error:
        report.write(f"{SETUP_FAILED} {error}\n")
        os._exit(1)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sandbox {what}: {os.strerror(err)}")


def _mount(libc, source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    encoded = (None if fstype is None else fstype.encode())
    _check(libc.mount(source.encode(), target.encode(), encoded, flags, data.encode()), f"mount {target}")


def _seal_filesystem(libc, uid: int) -> None:
    """Every mount of this namespace read-only, then a private tmpfs on /tmp owned by the program."""
    _mount(libc, "none", "/", None, MS_REC | MS_PRIVATE)
    _cover(libc, "/dev", DEVICES, MS_NOSUID)  # no GPUs, disks, terminals or shared memory
    for closed, paths in _closed_ancestors(sys.path).items():
        _cover(libc, closed, paths, MS_NOSUID | MS_NODEV)
    mount_points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = OCTAL_ESCAPE.sub(lambda escape: chr(int(escape[1], 8)), line.split()[4])  # \040: space
        if point not in mount_points and os.path.lexists(point):  # else hidden under a cover
            mount_points.append(point)
    for point in mount_points:
        kept = os.statvfs(point).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _mount(libc, "none", point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
    _mount(libc, "tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={SCRATCH_MB}m,nr_inodes=4096,mode=0700,uid={uid},gid={uid}")


def _closed_ancestors(import_paths: list[str]) -> dict[str, list[str]]:
    """The import paths that lie below a directory others cannot enter, by that directory.

    The interpreter may live under such a directory (pyenv under /root, mode 0700); covering it
    with an empty tmpfs that others can enter and binding back only the import paths lets the
    program's uid import what this interpreter imports, while the rest (keys, histories) stays out
    of sight.
    """
    needed = sorted({os.path.realpath(entry) for entry in import_paths if os.path.isdir(entry)})
    needed = [path for path in needed if not any(path.startswith(other + "/") for other in needed)]
    by_ancestor: dict[str, list[str]] = {}
    for path in needed:
        parts = Path(path).parts
        closed = next((str(Path(*parts[:depth])) for depth in range(2, len(parts) + 1)
                       if not os.stat(Path(*parts[:depth])).st_mode & 0o001), None)
        if closed is not None:
            by_ancestor.setdefault(closed, []).append(path)
    return by_ancestor


def _cover(libc, directory: str, keep: list[str] | tuple[str, ...], flags: int) -> None:
    """Hide `directory` under an empty tmpfs, then bind-mount back only the paths `keep` below it."""
    handles = [os.open(path, os.O_PATH) for path in keep]  # reachable once the cover is on
    _mount(libc, "tmpfs", directory, "tmpfs", flags, "size=1m,mode=0755")
    for path, handle in zip(keep, handles):
        if stat.S_ISDIR(os.fstat(handle).st_mode):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Path(path).touch()
        _mount(libc, f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
        os.close(handle)


def _confine(libc, config: dict, alive_read: int) -> None:
    """PID 1 of the sandbox, still root: a /proc of this namespace, the limits, then the uid."""
    _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    memory, cpu, uid = config["memory_bytes"], config["cpu_s"], config["uid"]
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_DATA, memory),
                         (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_NPROC, MAX_PROCESSES),
                         (resource.RLIMIT_FSIZE, OUTPUT_LIMIT_BYTES), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    os.set_blocking(alive_read, False)
    try:
        if os.read(alive_read, 1) == b"":  # the boot died before PDEATHSIG was armed
            os._exit(1)
    except BlockingIOError:
        pass
    os.close(alive_read)
    os.chdir(SCRATCH)


def _execute(program: str, report) -> None:
    """Run the program as __main__ and report how it ended; only a run to its end passes."""
    source = Path(SCRATCH, "program.py")
    source.write_text(program)  # for the lines of its tracebacks
    sys.argv = [str(source)]
    verdict, status = "passed", 0
    try:
        exec(compile(program, str(source), "exec"), {"__name__": "__main__"})
    except BaseException as error:  # noqa: BLE001 - every way of not finishing is a failure
        traceback.print_exception(error.with_traceback(error.__traceback__.tb_next))  # not this frame
        forbidden = isinstance(error, OSError) and error.errno in FORBIDDEN_ERRNOS
        verdict = f"forbidden: {error}" if forbidden else _failure(error)
        status = 1
    if os.getpid() == 1:  # forked children of the program fall through here too; only PID 1 reports
        report.write(verdict.replace("\n", " ") + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # not sys.exit: the program's threads and atexit hooks must not delay the end


def _failure(error: BaseException) -> str:
    if isinstance(error, MemoryError):
        return "memory"
    if isinstance(error, OSError) and error.errno == errno.EFBIG:  # RLIMIT_FSIZE on any file
        return "output limit"
    return f"failed: {type(error).__name__}"


if __name__ == "__main__":
    _boot()
