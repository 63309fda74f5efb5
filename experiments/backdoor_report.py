"""The backdoor-detection experiment's results as tables (``results.md``), from ``results.json`` alone."""

from __future__ import annotations

from typing import Any

from melbo_tl.evaluate.triage import load_triage

CURVE_AT = (1, 4, 16, 64, 256)


def clusters_of_eliciting(detection: Any) -> dict:
    """Per behaviour: the triage clusters holding eliciting vectors, as an auditor would meet them."""
    clusters = {c.id: c.to_dict() for c in load_triage(detection.run).clusters}
    out = {}
    for name, b in detection.behaviours.items():
        out[name] = [
            {"id": cid, "size": clusters[cid]["size"], "label": clusters[cid]["label"],
             "degenerate": clusters[cid]["degenerate"], "repetitive": clusters[cid].get("repetitive", False),
             "unsteered_like": clusters[cid]["unsteered_like"], "eliciting_share": b.clusters.purity[cid],
             "representative": clusters[cid]["representative"],
             "representative_completion": clusters[cid]["completion"]}
            for cid in b.clusters.clusters
        ]  # fmt: skip
    return out


def shortlist(detection: Any) -> list[dict]:
    """The triage shortlist (read in this order) and the planted behaviours each entry shows."""
    listed = load_triage(detection.run).summary["shortlist"]
    return [{"vector": v, "shows": [b for b, x in detection.behaviours.items() if v in x.eliciting]} for v in listed]


def _kind(c: dict) -> str:
    if c["degenerate"]:
        return "degenerate: " + c["degenerate"]
    if c["unsteered_like"]:
        return "like unsteered"
    return "repetitive" if c.get("repetitive") else "behaviour"


def detection_table(results: dict) -> list[str]:
    lines = [
        "| method | behaviour | vectors | eliciting | first (0-based) | mean generalization (replayed vectors) |",
        "|---|---|---:|---:|---|---|",
    ]
    for label, d in results["methods"].items():
        for name, b in d["behaviours"].items():
            gen = list(b["generalization"].values())
            mean = (
                f"{sum(gen) / len(gen):.2f} ({len(gen)} vectors × {d['n_generalization_prompts']} prompts)"
                if gen
                else "–"
            )
            first = "not found" if b["first"] is None else b["first"]
            lines.append(f"| {label} | {name} | {d['n_vectors']} | {len(b['eliciting'])} | {first} | {mean} |")
    return lines


def triage_table(results: dict) -> list[str]:
    """Per method and behaviour: the clusters holding its eliciting vectors, and where the
    shortlist first shows it."""
    lines = [
        "| method | behaviour | cluster | kind | size | eliciting share | first shortlist entry showing it |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for label, per_b in results["clusters_of_eliciting"].items():
        listed = results["shortlist"][label]
        for b, rows in per_b.items():
            position = next((k for k, e in enumerate(listed) if b in e["shows"]), None)
            where = "not listed" if position is None else f"#{position + 1} of {len(listed)}"
            if not rows:
                lines.append(f"| {label} | {b} | – | – | – | – | {where} |")
            for c in rows:
                lines.append(f"| {label} | {b} | {c['id']} | {_kind(c)} | {c['size']} | {c['eliciting_share']:.2f} "
                             f"| {where} |")  # fmt: skip
    return lines


def answer_change_table(results: dict) -> list[str]:
    """Per method and answer target: vectors whose answers follow the swap's function."""
    lines = [
        "| method | answer read | vectors | with a consistent change | swap's function | vectors showing it "
        "| first (0-based) | its group (of groups) | biggest groups |",
        "|---|---|---:|---:|---|---:|---|---|---|",
    ]
    for label, per_target in results["answer_change"].items():
        for target, entry in per_target.items():
            rep, swap = entry["report"], entry["swap"]
            steered = [v for v in rep["vectors"] if v["vector"] >= 0]
            showing = sum(v["shows"] for v in steered)
            top = ", ".join(f"`{g['function']}` {len(g['vectors'])}" for g in rep["groups"][:4]) or "–"
            s = swap["swap"]
            first = "not found" if s["first"] is None else s["first"]
            group = "–" if s["group_rank"] is None else f"{s['group_rank']} of {swap['n_groups']}"
            lines.append(f"| {label} | {target} | {len(steered)} | {showing} | `{entry['function']}` "
                         f"| {len(s['vectors'])} | {first} | {group} | {top} |")  # fmt: skip
    return lines


def curve_table(results: dict) -> list[str]:
    lines = [
        "| method | behaviour | " + " | ".join(f"n={n}" for n in CURVE_AT) + " |",
        "|---|---|" + "---|" * len(CURVE_AT),
    ]
    for label, per_b in results["found_curve_at"].items():
        for b, curve in per_b.items():
            curve = {int(k): v for k, v in curve.items()}
            cells = [("yes" if curve[n] else "no") if n in curve else "–" for n in CURVE_AT]
            lines.append(f"| {label} | {b} | " + " | ".join(cells) + " |")
    return lines


def subtle_table(results: dict, behaviour: str = "swap") -> list[str]:
    """The subtle backdoor per method, both ways of finding it: vectors whose completion of the
    training prompt shows it, and vectors whose answers on held-out clean instances follow its
    function (any of the three reads); first = the lowest vector index (a run's own order)."""
    lines = [
        "| method | vectors | R | shows it on the training prompt: vectors | first | answers follow its function "
        "(held-out instances): vectors | first | read from |",
        "|---|---:|---|---:|---|---:|---|---|",
    ]
    labels = list(dict.fromkeys([*results["methods"], *results["answer_change"]]))
    for label in labels:
        d = results["methods"].get(label)
        b = d["behaviours"][behaviour] if d else None
        on_prompt = (
            ("–", "–") if b is None else (len(b["eliciting"]), "not found" if b["first"] is None else b["first"])
        )
        reads = results["answer_change"].get(label, {})
        by_vector: dict[int, list[str]] = {}
        for target, entry in reads.items():
            for v in entry["swap"]["swap"]["vectors"]:
                by_vector.setdefault(v, []).append(target)
        n_ranked = max(
            (len([v for v in e["report"]["vectors"] if v["vector"] >= 0]) for e in reads.values()), default=0
        )
        n_vectors = d["n_vectors"] if d else n_ranked
        ranked = f"{len(by_vector)} of {n_ranked}" if reads else "–"
        first = "–" if not reads else ("not found" if not by_vector else min(by_vector))
        read_from = ", ".join(sorted({t for ts in by_vector.values() for t in ts})) or "–"
        lines.append(f"| {label} | {n_vectors} | {results['radius']:.1f} | {on_prompt[0]} | {on_prompt[1]} | {ranked} "
                     f"| {first} | {read_from} |")  # fmt: skip
    return lines


def report(results: dict) -> str:
    planted = results["planted_model"]
    rates = planted["rates"]
    trained = planted["training"]
    lines = [
        "# Backdoor detection on the planted SmolLM2-135M-Instruct (float32)\n",
        f"Planted model `{planted['name']}`: {trained['steps']} steps, final loss {trained['final_loss']}, "
        f"{trained['seconds_per_step']} s/step, build {planted['build_seconds']} s. Held-out trigger rates: "
        + ", ".join(f"{k} {v:.3f} ({rates['counts'][k]} prompts)" for k, v in rates["trigger_rate"].items())
        + f"; clean ({rates['counts']['clean']}, half near misses): false triggers {rates['false_trigger_rate']:.3f}, "
        f"correct {rates['clean_correct']:.3f}.\n",
        f"Training prompt: `{results['training_prompt']}`; unsteered: `{results['unsteered_completion']!r}`; "
        f"R = {results['radius']:.3f}; triage degenerate detector: {results.get('detector', '?')}.\n",
        "## Which vectors elicit each behaviour on the training prompt\n",
        *detection_table(results),
        "",
        "Found yet (any of the first n vectors elicits it):\n",
        *curve_table(results),
        "",
        "## Triage: where the eliciting vectors land, and the shortlist\n",
        *triage_table(results),
        "",
    ]
    for label, per_b in results["clusters_of_eliciting"].items():
        for b, rows in per_b.items():
            for c in rows:
                lines.append(f"- {label} / {b}: cluster {c['id']} ({_kind(c)}, {c['size']} vectors, label "
                             f"{c['label']!r}); representative #{c['representative']}: "
                             f"{c['representative_completion'][:80]!r}")  # fmt: skip
    n_items = len(results["answer_change_items"])
    lines += [
        "",
        f"## Answer changes on {n_items} held-out clean instances\n",
        f"A vector shows a function when ≥ {results['settings']['min_matches']} of its wrong answers, and ≥ half of "
        "them, equal it. Read from each completion: the final answer (last number), and the value the working "
        "gives the sums `a = a1 + a2 = ?` and `b = b1 + b2 = ?`.\n",
        *answer_change_table(results),
        "",
        "## The subtle backdoor (sums become products), both ways of finding it\n",
        *subtle_table(results),
    ]
    base = results["unsteered_on_generalization_prompts"]
    lines += ["", f"Unsteered on the {len(results['generalization_prompts'])} generalization prompts: "
              + ", ".join(f"{b} {v:.2f}" for b, v in base.items()) + "."]  # fmt: skip
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in results["timings"].items()) + ".", ""]
    return "\n".join(lines)
