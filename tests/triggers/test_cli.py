"""`melbo recover-trigger` on the toy organism: results in RUN/triggers/vector_I, errors before loading."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from melbo_tl.cli import app
from tests.triggers.test_recovery import toy  # noqa: F401  (the module fixture)
from tests.triggers.toy import RESPONSE, TRIGGER


def test_recover_trigger_writes_ranked_triggers_into_the_run(toy, tmp_path):  # noqa: F811
    from melbo_tl.artifacts import save_run
    from melbo_tl.triggers import load_recovery

    _, run = toy
    folder = save_run(tmp_path / "run", run)
    args = ["recover-trigger", str(folder), "--vector", "0", "--budget", "32", "--rounds", "1",
            "--target-tokens", "6", "--n-verify", "4", "--dtype", "float32"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "verified of 4 checked" in result.stderr and "| prompt | rank |" in result.stdout
    rec = load_recovery(folder, 0)
    assert rec is not None and rec.prompts[0].steered == RESPONSE
    assert TRIGGER in rec.prompts[0].verified[0]["text"]
    settings = json.loads((folder / "triggers" / "vector_0" / "settings.json").read_text())
    assert settings["config"]["budget"] == 32
    again = CliRunner().invoke(app, args)  # the folder holds a recovery: --resume or another --out
    assert again.exit_code == 2 and "--resume" in again.stderr
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_bad_input_is_refused_before_loading_a_model(toy, tmp_path):  # noqa: F811
    from melbo_tl.artifacts import save_run

    _, run = toy
    folder = save_run(tmp_path / "run", run)
    out_of_range = CliRunner().invoke(app, ["recover-trigger", str(folder), "--vector", "3"])
    assert out_of_range.exit_code == 2 and "valid 0…0" in out_of_range.stderr
    bad = CliRunner().invoke(app, ["recover-trigger", str(folder), "--vector", "0", "--variant", "beam"])
    assert bad.exit_code == 2 and "variant must be one of gcg, projection, random" in bad.stderr
    missing = CliRunner().invoke(app, ["recover-trigger", str(tmp_path / "nothing"), "--vector", "0"])
    assert missing.exit_code == 2 and "not a run folder" in missing.stderr
