"""The benchmark reports render from the results committed beside them, and docs/benchmarks.md is
what they render to: a broken `markdown()` or a stale doc shows up here, not 27 minutes into
`make bench`. Nothing is timed."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
run = importlib.import_module("run")


@pytest.mark.parametrize("path", sorted((BENCH / "results").glob("*.json")), ids=lambda p: p.stem)
def test_each_result_renders_one_table_line_per_row(path):
    result = json.loads(path.read_text())["result"]
    module = importlib.import_module(run.SECTIONS[path.stem.split("-")[0]][0])
    text = module.markdown(result)
    for row in result.get("rows", []):
        name = row.get("name") or row.get("model") or row["size"]
        assert any(line.startswith(f"| {name}") for line in text.splitlines()), name


def test_docs_benchmarks_md_is_what_the_results_render_to(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(run, "ROOT", tmp_path)
    run.render()
    committed = (BENCH.parent / "docs" / "benchmarks.md").read_text()
    assert (tmp_path / "docs" / "benchmarks.md").read_text() == committed, "rerun `python benchmarks/run.py --only <section>` or render()"


def test_the_gpu_benchmark_runs_its_every_path_on_the_cpu(tmp_path):
    """`benchmarks/gpu.py --smoke`: what `make bench-gpu` measures on a GPU, at sizes a CPU does
    in seconds, so the script is known to run before a GPU is at hand."""
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--smoke", "--device", "cpu", "--out", str(tmp_path / "gpu.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())["result"]
    assert {r["model"] for r in result["rows"]} == {"liquid nano", "dit-tiny"}
    assert all(r["steps_per_s"] > 0 and r["tflops"] > 0 for r in result["rows"])
    assert set(result["loaders"]) == {"host-resident", "device-resident", "streaming"}
    assert len(result["encode"]) == 2 and result["sample"]["images_per_s"] > 0
    assert "Headline: **liquid nano ÷ dit-tiny" in done.stdout
