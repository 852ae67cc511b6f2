"""HTML report: parsed with html.parser, and rendered in headless Chromium when present."""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from equimodal.bench import expand, run_grid
from equimodal.bench.launchers import InlineLauncher
from equimodal.bench.suite import DatasetEntry, Suite
from equimodal.cli import main

CHROMIUM = "/usr/bin/chromium"
DATA = {"n_train": 64, "n_valid": 32, "n_test": 48, "dim": 6, "latent": 3, "n_classes": 3}
SEQ = {**DATA, "task": "regression", "seq_len": 6, "modalities": "x,y,z", "strengths": 1.0}


class _Page(HTMLParser):
    """Collects what the tests look at: headings, tables, images, captions, resources."""

    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.tables = 0
        self.images: list[dict[str, str]] = []
        self.captions: list[str] = []
        self.th: list[str] = []
        self.external: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table" and a.get("class") == "results":
            self.tables += 1
        if tag == "img":
            self.images.append(a)
        if tag in ("h2", "caption", "th"):
            self._in = tag
            getattr(self, tag + ("s" if tag == "caption" else "")).append("")
        if tag in ("script", "link") or a.get("src", "").startswith("http"):
            self.external.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            target = getattr(self, self._in + ("s" if self._in == "caption" else ""))
            target[-1] += data


@pytest.fixture(scope="module")
def bench_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    suite = Suite(name="r", methods=["concat", "late"], seeds=[0, 1],
                  train={"epochs": 2, "batch_size": 16, "progress": False},
                  model={"hidden": 8, "layers": 1, "heads": 2},
                  datasets=[DatasetEntry("synthetic", "vec", dict(DATA)),
                            DatasetEntry("synthetic", "seq", dict(SEQ)),
                            DatasetEntry("no_such_data", "ghost", optional=True)])
    points = expand(suite, ["concat", "late"])
    summary = run_grid(points, out, InlineLauncher(), robustness=True, suite="r")
    assert summary.counts["finished"] == 8 and summary.counts["skipped"] == 4
    return out / "results.db"


@pytest.fixture(scope="module")
def report(bench_db: Path) -> Path:
    out = bench_db.parent / "report.html"
    assert main(["report", "--db", str(bench_db), "--tsne-samples", "30"]) == 0
    assert out.exists()
    return out


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_has_tables_figures_and_problems(report: Path) -> None:
    page = _parse(report)
    assert page.h2 == ["ghost", "seq", "vec", "Skipped and failed runs"]
    assert page.tables >= 8
    assert any(c.startswith("vec: accuracy") for c in page.captions)
    assert any(c.startswith("seq: MSA metrics") for c in page.captions)
    assert {"Acc-2", "MAE", "Corr", "fusion", "x|y", "Avg."} <= set(page.th)
    # Branch votes: single-label classification only (vec), one column per branch.
    assert [c for c in page.captions if c.startswith("branch outvoted")] == [
        "branch outvoted: % of test samples the branch gets right and the fused prediction "
        "wrong"]
    alts = [img["alt"] for img in page.images]
    for alt in ("training curves", "per-modality curves", "missing-modality chart",
                "noise curve", "Shapley chart", "t-SNE"):
        assert alts.count(alt) == 2, alt  # one per dataset with finished runs
    assert alts.count("frame_drop curve") == 1  # sequences only
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.external == []  # self-contained
    text = report.read_text()
    assert "not registered" in text and "<b>" in text and "<u>" in text


def test_report_of_an_empty_database(tmp_path: Path) -> None:
    from equimodal.bench import ResultStore
    from equimodal.report import build_report

    ResultStore(tmp_path / "results.db")
    page = _parse(build_report(tmp_path / "results.db", tmp_path / "r.html"))
    assert page.h2 == [] and page.images == []
    assert "No runs" in (tmp_path / "r.html").read_text()


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="headless Chromium not installed (apt-get install chromium "
                           "chromium-driver)")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
           report.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Page()
    dom.feed(proc.stdout)
    source = _parse(report)
    assert dom.tables == source.tables >= 8
    assert len(dom.images) == len(source.images) >= 10
    assert dom.h2 == source.h2
    assert all(img["src"].startswith("data:image/png;base64,") for img in dom.images)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_report_has_paired_delta_rows_and_balance_charts(report: Path) -> None:
    page = _parse(report)
    assert "Δ accuracy vs concat (pp)" in page.th  # the vec table's paired row
    assert "Δ mae vs concat" in page.th  # the MSA table's paired column
    alts = [img["alt"] for img in page.images]
    assert alts.count("balance chart") == 2  # one per dataset with finished runs
    text = report.read_text()
    # Every run stores a linear probe now: the chart plots it, not the read-out.
    assert "a linear probe on each method's own features" in text
    assert "no linear-probe metric in these runs" not in text
    assert "t-interval over seeds" in text


def test_results_paired_statistics_against_a_chosen_baseline(
        bench_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "--db", str(bench_db), "--baseline", "late"]) == 0
    out = capsys.readouterr().out
    head, _, block = out.partition("paired differences to late on matched seeds")
    assert block, out
    lines = [line.split() for line in block.splitlines()[2:] if line.strip()]
    assert [(r[0], r[1], r[3]) for r in lines] == [("seq", "concat", "2"), ("vec", "concat", "2")]
    assert main(["results", "--db", str(bench_db), "--format", "markdown"]) == 0
    assert "| Δ accuracy vs concat (pp) | ref. |" in capsys.readouterr().out


def test_balance_chart_uses_probe_metric_when_stored() -> None:
    import pandas as pd

    from equimodal.report.balance import balance_section, weak_modality

    rows = []
    for method, fused, probe, read in (("concat", .80, .40, .30), ("up", .85, .60, .35),
                                       ("unimodal", .70, .70, .55)):
        for seed in (0, 1):
            rows.append({"method": method, "seed": seed, "test/accuracy": fused + seed / 100,
                         "test/a/accuracy": .9, "test/b/accuracy": read,
                         "test/b/probe_accuracy": probe})
    done = pd.DataFrame(rows)
    assert weak_modality(done, ["a", "b"], "accuracy") == ("b", "unimodal")
    html = balance_section(done, ["a", "b"], "accuracy")
    assert "b: linear-probe" not in html  # labels live in the PNG; the text says which
    assert "a linear probe on each method's own features" in html and "balance chart" in html
    no_probe = balance_section(done.drop(columns=["test/b/probe_accuracy"]), ["a", "b"],
                               "accuracy")
    assert "read-out head" in no_probe
