"""The per-vector dashboard on the toy organism: contexts, completions, lens, r̂ cosine, triggers, page."""

from __future__ import annotations

import json

import pytest
import torch

from tests.triggers.test_recovery import SMALL, toy  # noqa: F401  (the module fixture)
from tests.triggers.toy import CLEAN, HELD_OUT, RESPONSE, TRIGGER


def test_dashboard_of_the_toy_vector(toy, tmp_path):  # noqa: F811
    from melbo_tl.analysis.dashboard import vector_dashboard, write_dashboard
    from melbo_tl.artifacts import save_run
    from melbo_tl.forward import run_forward
    from melbo_tl.prompts import prepare_prompts
    from melbo_tl.triggers import RecoveryConfig, recover_trigger

    model, run = toy
    folder = save_run(tmp_path / "run", run)
    recover_trigger(model, folder, 0, RecoveryConfig(**SMALL), progress=False)
    dash = vector_dashboard(model, folder, 0, n_per_set=12, top=4)

    assert dash.completions == [{"prompt": HELD_OUT, "steered": RESPONSE, "unsteered": CLEAN}]
    assert dash.n_contexts_read == 24 and len(dash.contexts) == 4
    peaks = [c.peak for c in dash.contexts]
    assert peaks == sorted(peaks, reverse=True)
    # the projections are those of the user message's tokens, read at the site without steering
    best = dash.contexts[0]
    assert "".join(best.tokens) == best.prompt
    fwd = run_forward(model, prepare_prompts(model, [best.prompt]), record=[dash.site], logits="none")
    acts = fwd.activations[dash.site][0].float().cpu()
    unit = run.vectors[0].float() / run.vectors[0].float().norm()
    expected = (acts @ unit).tolist()
    n = len(best.tokens)
    assert any(expected[i : i + n] == pytest.approx(best.projection, abs=1e-3) for i in range(len(expected) - n + 1))
    assert dash.refusal_cosine is not None and -1 <= dash.refusal_cosine <= 1
    assert len(dash.promoted) == 10 and dash.promoted[0][1] >= dash.promoted[-1][1]
    assert dash.triggers and TRIGGER in dash.triggers[0]["text"] and dash.triggers[0]["verified"]

    page = write_dashboard(dash, folder)
    text = page.read_text()
    assert "circuits-vis" in text and "Recovered triggers" in text and TRIGGER in text
    assert "unpkg.com" not in text  # offline
    data = json.loads((folder / "analysis" / "dashboard_0.json").read_text())
    assert data["index"] == 0 and data["site"] == dash.site
    assert dash._repr_html_().count("<h3>") == 4

    from typer.testing import CliRunner

    from melbo_tl.analysis.report import write_report
    from melbo_tl.cli import app

    result = CliRunner().invoke(
        app, ["dashboard", str(folder), "--vector", "0", "--n-prompts", "4", "--dtype", "float32"]
    )
    assert result.exit_code == 0, result.output
    report = write_report(folder).read_text()
    assert "Vector dashboards" in report and "Vector 0 of" in report and TRIGGER in report


def test_dashboard_refuses_an_index_out_of_range(toy):  # noqa: F811
    from melbo_tl.analysis.dashboard import vector_dashboard

    model, run = toy
    with pytest.raises(ValueError, match="vector"):
        vector_dashboard(model, run, 1)
    assert torch.is_tensor(run.vectors)
