"""Markdown tables of experiments/capability_discovery.py's results.json."""

from __future__ import annotations

from typing import Any

STYLE_NAMES = {"direct": "direct", "step": "step by step", "step-shot": "step by step + worked example"}


def ci(s: dict[str, Any]) -> str:
    return f"{s['correct']}/{s['n']} = {s['accuracy']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"


def survey_table(survey: dict[str, Any]) -> list[str]:
    lines = [
        f"Survey (validation split, n per cell below; greedy; {survey['tokens_allowed']} new tokens allowed in "
        "every style; accuracy [95 % Wilson]):",
        "",
        "| model | task | direct | step | step-shot | gap (better step − direct) | mean tokens d / s / ss "
        "| finished s / ss |",
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
        f"Ceiling ({settings['model']}, task `{settings['task']}`, test split, greedy, {settings['dtype']}; "
        f"the ceiling style, chosen on validation, is `{ceiling['ceiling_style']}`):",
        "",
        "| prompt | accuracy [95 % Wilson] | tokens allowed | mean tokens | finished | shows work |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for style, s in ceiling["styles"].items():
        lines.append(
            f"| {style} | {ci(s)} | {s['tokens_allowed']} | {s['mean_tokens']:.0f} | {s['finished']:.2f} | "
            f"{s['shows_work']:.2f} |"
        )
    return lines


def gap_closed(direct: float, ceiling: float, steered: float) -> float:
    """The share of the gap from ``direct`` to ``ceiling`` that ``steered`` closes (nan without a gap)."""
    return (steered - direct) / (ceiling - direct) if ceiling > direct else float("nan")


def capability_rows(r: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(condition, test summary, validation cell) for the capability table."""
    test, ceiling = r["vectors"]["test"], r.get("ceiling")
    rows = []
    if ceiling is not None:
        style = ceiling["ceiling_style"]
        rows += [("direct prompt", ceiling["styles"]["direct"], "—"),
                 (f"step-by-step ceiling (`{style}` prompt)", ceiling["styles"][style], "—")]  # fmt: skip
    rows.append(("unsteered (direct prompt, in the ranking run)", test["unsteered"], "—"))
    for key, name in (("best_dct", "best DCT vector"), ("best_random", "best random vector")):
        b = test[key]
        rows.append((f"{name} ({b['config']} #{b['vector']})", b["test"], ci(b)))
    return rows


def capability_table(r: dict[str, Any]) -> list[str]:
    settings, v = r["settings"], r["vectors"]
    lines = [
        f"Capability ({settings['model']}, task `{settings['task']}`; vectors chosen on the validation split "
        f"({settings['splits']['val']} instances), reported on the disjoint test split ({settings['splits']['test']} "
        f"instances); greedy, {settings['tokens_allowed']} new tokens, {settings['dtype']}):",
        "",
        "| condition | test accuracy [95 % Wilson] | validation accuracy | test: shows work | test: mean tokens "
        "| test: finished |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, s, val in capability_rows(r):
        lines.append(f"| {name} | {ci(s)} | {val} | {s['shows_work']:.2f} | {s['mean_tokens']:.0f} | "
                     f"{s['finished']:.2f} |")  # fmt: skip
    ceiling = r.get("ceiling")
    if ceiling is not None:
        direct = ceiling["styles"]["direct"]["accuracy"]
        top = ceiling["styles"][ceiling["ceiling_style"]]["accuracy"]
        best = v["test"]["best_dct"]["test"]
        half = direct + (top - direct) / 2
        lines += [
            "",
            f"Gap (ceiling − direct) {top - direct:+.2f}; the best DCT vector closes "
            f"{gap_closed(direct, top, best['accuracy']):.0%} of it. Half the gap is accuracy {half:.2f}; the "
            f"vector's 95 % interval [{best['low']:.2f}, {best['high']:.2f}] lies "
            + (
                "wholly above it."
                if best["low"] > half
                else "wholly below it."
                if best["high"] < half
                else "across it."
            ),
        ]
    lines += [
        "",
        "Vectors eliciting step-by-step text (≥ 50 % of their screen completions show work; screen split, "
        f"{settings.get('screen_tokens', settings['tokens_allowed'])} new tokens), per configuration:",
        "",
        "| vectors | R | source → target | n | eliciting (indices) | their screen accuracy | unsteered screen |",
        "|---|---:|---|---:|---|---|---|",
    ]
    for label, part in (("DCT", v["dct"]), ("random", v["random"])):
        for c in part["configs"]:
            accs = ", ".join(f"{a:.1f}" for a in c["eliciting_accuracy"].values()) or "—"
            lines.append(
                f"| {label} {c['config']} | {c['radius']:.3g} | {c['source']} → {c['target']} | {c['n_vectors']} | "
                f"{len(c['eliciting'])} {c['eliciting']} | {accs} | {ci(c['unsteered_screen'])} |"
            )
    return lines


def markdown(r: dict[str, Any]) -> str:
    lines: list[str] = []
    if "survey" in r:
        lines += survey_table(r["survey"]) + [""]
    c = r["choice"]
    lines += [f"Chosen: {c['model']}, task `{c['task']}` ({c['reason']}; validation gap {c['val_gap']:+.2f}).", ""]
    if "ceiling" in r:
        lines += ceiling_table(r["ceiling"], r["settings"]) + [""]
    if "vectors" in r:
        lines += capability_table(r) + [""]
    lines.append(f"Wall time of this invocation (s; near 0 where read back): {r.get('seconds', {})}")
    return "\n".join(lines) + "\n"
