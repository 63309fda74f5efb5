"""Markdown tables of experiments/capability_discovery.py's results.json."""

from __future__ import annotations

from typing import Any


def ci(s: dict[str, Any]) -> str:
    return f"{s['correct']}/{s['n']} = {s['accuracy']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"


def survey_table(survey: dict[str, Any]) -> list[str]:
    lines = [
        f"Survey (validation split; greedy; {survey['tokens_allowed']} new tokens allowed for every style; "
        "accuracy [95 % Wilson]):",
        "",
        "| model | task | direct | step | step-shot | gap (best step − direct) | mean tokens d / s / ss | finished s / ss |",
        "|---|---|---|---|---|---:|---|---|",
    ]
    cells = {(c["model"], c["task"], c["style"]): c for c in survey["cells"]}
    for g in survey["gaps"]:
        d, s, ss = (cells[(g["model"], g["task"], style)] for style in ("direct", "step", "step-shot"))
        lines.append(
            f"| {g['model']} | {g['task']} | {ci(d)} | {ci(s)} | {ci(ss)} | {g['gap']:+.2f} | "
            f"{d['mean_tokens']:.0f} / {s['mean_tokens']:.0f} / {ss['mean_tokens']:.0f} | "
            f"{s['finished']:.2f} / {ss['finished']:.2f} |"
        )
    return lines


def ceiling_table(ceiling: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    lines = [
        f"Ceiling ({settings['model']}, task `{settings['task']}`, test split, greedy):",
        "",
        "| prompt | accuracy [95 % Wilson] | tokens allowed | mean tokens | finished | shows work |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for style, s in ceiling.items():
        lines.append(
            f"| {style} | {ci(s)} | {s['tokens_allowed']} | {s['mean_tokens']:.0f} | {s['finished']:.2f} | "
            f"{s['shows_work']:.2f} |"
        )
    return lines


def capability_table(r: dict[str, Any]) -> list[str]:
    settings, v = r["settings"], r["vectors"]
    test = v["test"]
    ceiling = r.get("ceiling", {})
    step = max((ceiling[s] for s in ("step", "step-shot") if s in ceiling), key=lambda s: s["accuracy"], default=None)
    rows = []
    if "direct" in ceiling:
        rows.append(("direct prompt", ceiling["direct"], "—"))
    if step is not None:
        rows.append(("step-by-step ceiling", step, "—"))
    rows.append(("unsteered (direct prompt, ranking run)", test["unsteered"], "—"))
    for key, name in (("best_dct", "best DCT vector"), ("best_random", "best random vector")):
        b = test[key]
        rows.append((f"{name}: {b['config']} #{b['vector']}", b["test"], f"{b['accuracy']:.2f} ({b['n']})"))
    lines = [
        f"Capability ({settings['model']}, task `{settings['task']}`): vectors chosen on validation, reported on "
        f"the disjoint test split ({settings['splits']['test']} instances, {settings['tokens']} new tokens):",
        "",
        "| condition | test accuracy [95 % Wilson] | validation accuracy (n) | shows work |",
        "|---|---|---|---:|",
    ]
    for name, s, val in rows:
        lines.append(f"| {name} | {ci(s)} | {val} | {s['shows_work']:.2f} |")
    if "direct" in ceiling and step is not None:
        gap = step["accuracy"] - ceiling["direct"]["accuracy"]
        closed = (
            (test["best_dct"]["test"]["accuracy"] - ceiling["direct"]["accuracy"]) / gap if gap > 0 else float("nan")
        )
        lines += ["", f"Gap (ceiling − direct) {gap:+.2f}; the best DCT vector closes {closed:.0%} of it."]
    lines += ["", "Vectors eliciting step-by-step text (≥ 50 % of screen completions show work):", ""]
    lines += ["| run | R | vectors | eliciting | unsteered screen accuracy |", "|---|---:|---:|---|---:|"]
    for label, part in (("DCT", v["dct"]), ("random", v["random"])):
        for c in part["configs"]:
            lines.append(
                f"| {label} {c['config']} | {c['radius']:.3g} | {c['n_vectors']} | {len(c['eliciting'])} "
                f"{c['eliciting']} | {c['unsteered_screen']:.2f} |"
            )
    return lines


def markdown(r: dict[str, Any]) -> str:
    lines: list[str] = []
    if "survey" in r:
        lines += survey_table(r["survey"]) + [""]
    if "ceiling" in r:
        lines += ceiling_table(r["ceiling"], r["settings"]) + [""]
    if "vectors" in r:
        lines += capability_table(r) + [""]
    lines.append(f"Settings: {r['settings']}")
    return "\n".join(lines) + "\n"
