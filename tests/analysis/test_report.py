"""The whole pipeline on a tiny model: ``melbo demo`` (refusal direction, DCT, triage, one-shot,
``melbo analyze``, ``melbo report``), then the report, atlas first, opened in headless Chromium."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from melbo_tl.analysis.browser import check_page
from melbo_tl.analysis.report import SECTIONS, write_report
from melbo_tl.cli import app
from melbo_tl.evaluate.triage import load_triage

TINY_DEMO = [
    "--factors",
    "6",
    "--iterations",
    "2",
    "--rho",
    "0.02",
    "--analyze-top",
    "2",
    "--n-train",
    "4",
    "--n-val",
    "4",
    "--n-prompts",
    "2",
    "--kl-threshold",
    "1e9",
    "--induce-threshold",
    "-1e9",
    "--max-new-tokens",
    "4",
]


@pytest.fixture(scope="module")
def demo(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--model", str(tiny_model_dir), *TINY_DEMO])
    assert result.exit_code == 0, result.output
    return out, result.output


def analyzed(out) -> list[int]:
    """The DCT vectors the demo's analysis compared with r̂ (recorded in its settings)."""
    return json.loads((out / "dct" / "analysis" / "settings.json").read_text())["vectors"]


def test_demo_writes_every_stage_and_prints_the_results(demo):
    out, output = demo
    for stage in ("refusal_direction", "dct", "oneshot"):
        assert (out / stage / "run.json").is_file()
    assert (out / "dct" / "triage" / "behaviours.json").is_file()
    analysis = out / "dct" / "analysis"
    for name in (
        "vector_effects",
        "vector_cosines",
        "delta_cosines",
        "readout",
        "lens",
        "attribution",
        "mediation",
        "token_views",
    ):
        assert (analysis / f"{name}.json").is_file(), name
    for name in ("vector_effects", "vector_cosines", "mediation"):
        assert (analysis / f"{name}.csv").read_text().count("\n") >= 2
    figures = analysis / "figures"
    assert (figures / "plotly.min.js").stat().st_size > 1_000_000
    html_figures = list(figures.glob("*.html"))
    assert html_figures and all('src="plotly.min.js"' in p.read_text() for p in html_figures)
    rows = json.loads((analysis / "vector_cosines.json").read_text())["rows"]
    chosen = analyzed(out)
    assert [r["vector"] for r in rows] == [f"dct[{i}]" for i in chosen] + ["oneshot[0]"]
    triage = load_triage(out / "dct")
    refusal = {r.index: r.refusal for r in triage.behaviours}
    expected = [i for i in triage.shortlist if refusal[i] == 0][:2]  # the shortlist's non-refusing first
    assert chosen[: len(expected)] == expected and len(set(chosen)) == 2
    assert all(-1 <= r["cos_r_at_site"] <= 1 for r in rows)
    assert "cos(v, r̂@site)" in output and "mediation dct[" in output and "report: " in output
    assert "behaviours of 6 DCT vectors" in output and "shortlist (read first)" in output
    timings = json.loads((out / "demo_timings.json").read_text())
    assert set(timings) >= {"refusal direction", "DCT", "triage", "one-shot vector", "analysis", "total"}


def test_report_renders_offline_in_chromium(demo, tmp_path):
    out, _ = demo
    report = out / "dct" / "report.html"
    page = report.read_text()
    assert "unpkg.com" not in page and "src='http" not in page and 'src="http' not in page
    assert page.count("var CircuitsVis") == 1  # the circuitsvis bundle is inlined once
    # Views project onto r̂ where the refusal run has it at the Δ hook, else onto the vector itself.
    has_r = json.loads((out / "dct" / "analysis" / "delta_cosines.json").read_text())["against"] == ["r̂"]
    assert ("projection onto r̂ per token" in page) == has_r
    assert ("projection onto the vector&#x27;s own direction per token" in page) == (not has_r)
    check = check_page(report, screenshot=tmp_path / "report.png")
    assert check.console_errors == [] and check.page_errors == [] and check.external_requests == []
    assert check.element_ids == list(SECTIONS)
    assert {
        "Behaviour atlas",
        "Run settings",
        "Loss curves",
        "Generations",
        "Similarity",
        "Logit lens",
        "Attribution",
        "Token views",
    } <= set(check.headings)
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


def test_analysis_resumes_and_restarts_on_new_settings(demo, tiny_model_dir):
    out, _ = demo
    analysis = out / "dct" / "analysis"
    before = {p.name: p.stat().st_mtime_ns for p in analysis.glob("*.json")}
    args = [
        "analyze",
        str(out / "dct"),
        "--against",
        str(out / "refusal_direction"),
        "--with",
        str(out / "oneshot"),
        "--model",
        str(tiny_model_dir),
        "--vectors",
        ",".join(map(str, analyzed(out))),
        "--n-prompts",
        "2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    after = {p.name: p.stat().st_mtime_ns for p in analysis.glob("*.json") if p.name != "settings.json"}
    assert after == {k: v for k, v in before.items() if k != "settings.json"}  # nothing recomputed
    stale = analysis / "figures" / "lens_gone[0].json"
    stale.write_text("{}")
    result = CliRunner().invoke(app, [*args[:-1], "1", "--max-new-tokens", "0"])
    assert not stale.exists()  # new settings: old tables and figures are cleared
    assert result.exit_code == 0, result.output
    assert json.loads((analysis / "delta_cosines.json").read_text())["n_prompts"] == 1
    med = json.loads((analysis / "mediation.json").read_text())
    assert all(c["refusal"] is None for m in med.values() for c in m["conditions"].values())


def test_report_of_an_unanalysed_run_says_how(demo):
    out, _ = demo
    path = write_report(out / "oneshot")
    page = path.read_text()
    assert "Not analysed yet" in page and "melbo analyze" in page
    assert "Sure, here" not in page or "Generations" in page


def test_cli_errors_name_the_bad_folder(tmp_path):
    result = CliRunner().invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 2 and str(tmp_path) in result.output and "not a run folder" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a run folder" in result.output
