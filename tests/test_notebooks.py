"""The notebooks run headless in a real Jupyter kernel on a real CPU sweep and draw their figures."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = REPO / "notebooks"
FIGURES = {
    "scaling_laws": ["isoflop.png", "loss_frontier.png", "optimal_scaling.png"],
    "miniseries": ["miniseries.png"],
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def execute(name: str, sweep_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    """Run every cell; a cell that raises fails the test with its traceback."""
    monkeypatch.setenv("LLM_SWEEP_DIR", str(sweep_dir))  # the kernel inherits this process's environment
    notebook = read(name)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def outputs(notebook, output_type: str) -> list:
    return [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if output.output_type == output_type]


def stream_text(notebook, stream: str) -> str:
    return "".join(output.text for output in outputs(notebook, "stream") if output.name == stream)


@pytest.fixture(scope="module")
def sweep_dir(isoflop_cpu_sweep, tmp_path_factory) -> Path:
    """A copy of the session's sweep without its results table, which the notebooks must then collect,
    and without figures, which they must draw."""
    copy = tmp_path_factory.mktemp("notebooks") / "ci"
    shutil.copytree(isoflop_cpu_sweep, copy, ignore=shutil.ignore_patterns("results.*", "figures"))
    return copy


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebooks_ship_without_outputs_and_read_the_sweep_in_their_first_cell(name):
    notebook = read(name)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    first = notebook.cells[0]
    assert first.cell_type == "code" and "SWEEP_DIR = " in first.source and "LLM_SWEEP_DIR" in first.source


def check_figures(notebook, name: str, sweep_dir: Path) -> None:
    inline = [output for output in outputs(notebook, "display_data") if "image/png" in output.data]
    assert len(inline) == len(FIGURES[name])
    for figure in FIGURES[name]:
        assert (sweep_dir / "figures" / figure).read_bytes().startswith(PNG_SIGNATURE), figure


def test_scaling_laws_notebook_fits_plots_and_plans_on_the_cpu_sweep(sweep_dir, monkeypatch):
    notebook = execute("scaling_laws", sweep_dir, monkeypatch)
    assert not outputs(notebook, "error")
    assert (sweep_dir / "results.csv").is_file()  # collected by the notebook itself
    check_figures(notebook, "scaling_laws", sweep_dir)
    warnings, printed = stream_text(notebook, "stderr"), stream_text(notebook, "stdout")
    # The demo budgets are too small to bracket an optimum: every budget says so.
    for budget in ["1e+11", "2.15e+11", "4.64e+11"]:
        assert f"budget {budget} FLOPs: no parabola minimum" in warnings
    assert warnings.count("the smallest model: the optimum lies below it") == 3
    assert "12 finished runs" in printed
    assert printed.count("python train.py model.depth=") == 2
    assert "budget.target_flops=1e+19" in printed


def test_miniseries_notebook_plots_the_ladder_of_the_largest_budget(sweep_dir, monkeypatch):
    notebook = execute("miniseries", sweep_dir, monkeypatch)
    assert not outputs(notebook, "error")
    check_figures(notebook, "miniseries", sweep_dir)
    assert "taking the ladder at the largest, 4.64e+11 FLOPs" in stream_text(notebook, "stderr")
    tables = [output.data["text/html"] for output in outputs(notebook, "display_data") if "text/html" in output.data]
    ladder = [table for table in tables if "ratio" in table]
    assert len(ladder) == 1 and ladder[0].count("<tr>") == 4  # a row for each of depths 1 to 4
