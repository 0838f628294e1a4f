"""Pytest plumbing for tests that need the single-node Slurm cluster.

A test marked ``@pytest.mark.slurm`` gets the session fixture ``slurm_cluster``
automatically. The fixture checks the cluster with ``tests/slurm/cluster.sh
status`` and, when it is down, starts it once if this process may (root with
apt-get). If the cluster still cannot be had, slurm tests are skipped, so a
machine without root runs everything else; with ``LLM_REQUIRE_SLURM=1`` (CI)
they error instead, so a broken cluster can never pass as a green run.
"""

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLUSTER_SH = Path(__file__).parent / "slurm" / "cluster.sh"
# A cold start installs packages from Debian first.
START_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    partition: str
    cpus: int


def _run(action: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), action],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _bring_up() -> str | None:
    """Return None once the cluster is usable, else why it is not."""
    status = _run("status", timeout=60)
    if status.returncode == 0:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{status.stdout.strip()}; cannot start it here (needs root and apt-get)"
    try:
        start = _run("start", timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"'cluster.sh start' took over {START_TIMEOUT_S} s"
    if start.returncode != 0:
        return f"'cluster.sh start' failed:\n{start.stderr[-2000:]}"
    return None


def _describe() -> SlurmCluster:
    out = subprocess.run(
        ["sinfo", "-h", "-o", "%P %c"], capture_output=True, text=True, check=True
    ).stdout.split()
    return SlurmCluster(partition=out[0].rstrip("*"), cpus=int(out[1]))


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    # A session fixture runs once: its skip or failure is replayed for every test.
    reason = _bring_up()
    if reason is not None:
        if os.environ.get("LLM_REQUIRE_SLURM") == "1":
            pytest.fail(f"Slurm cluster required (LLM_REQUIRE_SLURM=1) but unavailable: {reason}", pytrace=False)
        pytest.skip(f"Slurm cluster unavailable: {reason}")
    return _describe()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The marker alone must be enough: a slurm test that forgot to request the
    # fixture would otherwise hang on a missing cluster instead of skipping.
    for item in items:
        if not isinstance(item, pytest.Function) or not item.get_closest_marker("slurm"):
            continue
        if "slurm_cluster" not in item.fixturenames:
            item.fixturenames.insert(0, "slurm_cluster")
