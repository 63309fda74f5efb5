"""From a steering vector back to an input: which edit of the clean prompt makes the *unsteered*
model do what the vector makes it do?

For vector ``i`` of a run and each clean prompt (default: the run's own prompts), the behaviour
is the vector's greedy steered completion. The search (:mod:`melbo_tl.triggers.search`) looks
for single-token substitutions and insertions in the user message, then combinations of them,
that make that completion likely without steering (variant ``gcg``: GCG-style first-order
shortlist, half of it from the tokens the model finds plausible at each place; exact,
surprise-weighted log-likelihood), that move the activation at the vector's site along the vector
(``projection``), or at random (``random``, the baseline). The best candidates are then verified
by unsteered greedy generation (:mod:`melbo_tl.triggers.verify`). Results are written to
``RUN/triggers/vector_<i>/`` and the search resumes from its checkpoints.

>>> rec = recover_trigger(model, "runs/planted/dct", 12, RecoveryConfig(budget=512))
>>> rec.prompts[0].triggers[0]["text"], rec.prompts[0].triggers[0]["completion"]
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from melbo_tl.artifacts import Run, atomic_write_json, load_run
from melbo_tl.generate import generate
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.runs import check_index, intervention_from_run
from melbo_tl.steering.interventions import AddVector
from melbo_tl.triggers.config import RecoveryConfig
from melbo_tl.triggers.edits import EditablePrompt, describe_ops, typeable_tokens
from melbo_tl.triggers.scoring import Behaviour, clean_target_logprobs, exact_scores, surprise_weights
from melbo_tl.triggers.search import SearchSettings, SearchState, run_search
from melbo_tl.triggers.verify import verify

TRIGGERS_DIR = "triggers"
SETTINGS_FILE, STATE_FILE, RESULT_FILE = "settings.json", "search.json", "triggers.json"


@dataclass
class PromptRecovery:
    """Recovery on one clean prompt.

    Fields: ``prompt``; ``steered`` (the vector's completion: the behaviour); ``clean_completion``
    (unsteered); ``clean_loglik`` (the steered completion's log-probability per token, weighted as the search
    weights it (``RecoveryConfig.weighting``),
    after the clean prompt); ``baseline_similarity`` (clean vs steered completion); ``triggers``
    (ranked: verified first, then by the search's score; each with ``text``, ``edit``, ``ops``,
    ``n_edits``, ``loglik``, ``shift``, and after verification ``completion``,
    ``similarity``, ``verified_loglik``, ``verified``); ``n_evaluated``; ``cost``
    (rows of gradient and exact passes, generations, seconds); ``embedder``.
    """

    prompt: str
    steered: str
    clean_completion: str
    clean_loglik: float
    baseline_similarity: float
    triggers: list[dict[str, Any]]
    n_evaluated: int
    cost: dict[str, float]
    embedder: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def verified(self) -> list[dict[str, Any]]:
        return [t for t in self.triggers if t.get("verified")]


@dataclass
class Recovery:
    """Fields: ``vector`` index, ``site`` hook, ``config``, ``prompts`` (one :class:`PromptRecovery` each)."""

    vector: int
    site: str
    config: dict[str, Any]
    prompts: list[PromptRecovery] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"vector": self.vector, "site": self.site, "config": self.config,
                "prompts": [p.to_dict() for p in self.prompts]}  # fmt: skip

    def table(self, top: int = 5) -> str:
        """A markdown table of the top triggers per prompt."""
        lines = ["| prompt | rank | trigger | edit | loglik | shift | similarity | verified | completion |",
                 "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for p in self.prompts:
            for rank, t in enumerate(p.triggers[:top], 1):
                cells = [p.prompt[:40], rank, t["text"], t["edit"], t.get("loglik"), t.get("shift"),
                         t.get("similarity", "–"), "yes" if t.get("verified") else "no",
                         str(t.get("completion", "–"))[:60]]  # fmt: skip
                lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return "\n".join(lines) + "\n"


def triggers_dir(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / TRIGGERS_DIR / f"vector_{index}"


def load_recovery(run_dir: str | Path, index: int) -> Recovery | None:
    """The finished recovery of vector ``index`` written in a run folder, or None."""
    path = triggers_dir(run_dir, index) / RESULT_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Recovery(data["vector"], data["site"], data["config"], [PromptRecovery(**p) for p in data["prompts"]])


def _steer(run: Run, index: int, scale: float) -> AddVector:
    steer = intervention_from_run(run, index, scale=scale)
    if not isinstance(steer, AddVector) or steer.vector.ndim != 1:
        raise ValueError(
            f"Trigger recovery needs a steering-vector run; entry {index} of this {run.meta.get('method')!r} "
            f"run is a {type(steer).__name__}."
        )
    return steer


def _prompts(run: Run, prompts: list[str] | None) -> list[str]:
    chosen = list(prompts) if prompts else list(run.meta.get("prompts") or [])
    if not chosen or not all(isinstance(p, str) and p.strip() for p in chosen):
        raise ValueError("Give clean prompts (--prompt): the run stores none as plain text.")
    return chosen


def _check_settings(folder: Path, settings: dict[str, Any], cfg: RecoveryConfig, resume: bool) -> None:
    path = folder / SETTINGS_FILE
    if path.is_file():
        if not resume:
            raise ValueError(f"{folder} already holds a recovery; pass resume=True (--resume) to continue it.")
        saved = json.loads(path.read_text())
        diffs = cfg.differences(RecoveryConfig.from_dict(saved["config"]), ignore=RecoveryConfig.RESUMABLE)
        if diffs or saved["prompts"] != settings["prompts"] or saved["site"] != settings["site"]:
            details = ", ".join(f"{k}: saved {b!r} vs now {a!r}" for k, (a, b) in diffs.items()) or "prompts or site"
            raise ValueError(f"Cannot resume {folder}: its settings differ ({details}). Use another folder.")
    atomic_write_json(path, settings)


def recover_trigger(
    model: Any,
    run: str | Path | Run,
    index: int,
    cfg: RecoveryConfig | None = None,
    *,
    prompts: list[str] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Recovery:
    """Search edits of each clean prompt that make the unsteered model produce what vector
    ``index`` elicits (module docstring). ``run``: a run folder (results go to
    ``RUN/triggers/vector_<index>/`` unless ``out`` says otherwise) or a :class:`Run` in memory
    (written only with ``out``). ``resume`` continues an interrupted recovery with the same settings."""
    cfg = cfg or RecoveryConfig()
    loaded = run if isinstance(run, Run) else load_run(run, model)
    check_index(index, loaded.vectors.shape[0], "vector")
    steer = _steer(loaded, index, cfg.scale)
    chosen = _prompts(loaded, prompts)
    folder = Path(out) if out is not None else None if isinstance(run, Run) else triggers_dir(run, index)
    if folder is not None:
        settings = {"vector": index, "site": steer.hook, "prompts": chosen, "config": cfg.to_dict()}
        _check_settings(folder, settings, cfg, resume)
    result = Recovery(index, steer.hook, cfg.to_dict())
    for j, prompt in enumerate(chosen):
        sub = None if folder is None else folder / f"prompt_{j}"
        result.prompts.append(_recover_on(model, steer, prompt, cfg, sub, progress))
        if folder is not None:
            atomic_write_json(folder / RESULT_FILE, result.to_dict())
    return result


def _behaviour(model: Any, steer: AddVector, prompt: str, cfg: RecoveryConfig) -> dict[str, Any]:
    steered, clean = generate(model, [prompt, prompt], [_rows_steer(steer)], max_new_tokens=cfg.target_tokens)
    tok = chat_tokenizer(model)
    target = list(steered.token_ids) or [int(tok.eos_token_id)]
    return {"steered": steered.text, "target": target, "clean_completion": clean.text}


def _rows_steer(steer: AddVector) -> AddVector:
    """Row 0 steered, row 1 not: one batched generate for both completions."""
    rows = torch.stack([steer.vector * steer.scale, torch.zeros_like(steer.vector)])
    return AddVector(rows, steer.hook, steer.positions, 1.0)


def _recover_on(
    model: Any, steer: AddVector, prompt: str, cfg: RecoveryConfig, folder: Path | None, progress: bool
) -> PromptRecovery:
    started = time.perf_counter()
    tok = chat_tokenizer(model)
    state_file = None if folder is None else folder / STATE_FILE
    saved = json.loads(state_file.read_text()) if state_file is not None and state_file.is_file() else None
    setup = saved["behaviour"] if saved else _behaviour(model, steer, prompt, cfg)
    editable = EditablePrompt.from_text(model, prompt)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    behaviour = Behaviour(
        tuple(setup["target"]), (steer.vector * steer.scale).detach().float().cpu(), steer.hook, int(pad)
    )
    if not saved:
        setup["clean_token_logprobs"] = [round(x, 5) for x in clean_target_logprobs(model, editable, behaviour)]
    if cfg.weighting == "surprise":
        behaviour = dataclasses.replace(behaviour, weights=surprise_weights(setup["clean_token_logprobs"]))
    if not saved:
        [ll], [proj] = exact_scores(model, editable, [editable.content], behaviour)
        setup.update(clean_loglik=round(float(ll), 5), clean_projection=round(proj, 5),
                     setup_seconds=round(time.perf_counter() - started, 2))  # fmt: skip
    placeholder = tok(cfg.placeholder, add_special_tokens=False)["input_ids"]
    if len(placeholder) != 1:
        raise ValueError(f"placeholder {cfg.placeholder!r} is {len(placeholder)} tokens; give a one-token text.")
    settings = SearchSettings(cfg.variant, cfg.budget, cfg.rounds, cfg.beam, cfg.top_k, cfg.batch_size, cfg.seed,
                              placeholder[0], cfg.plausible)  # fmt: skip
    state = SearchState.from_dict(saved["search"]) if saved else SearchState()

    def checkpoint(current: SearchState) -> None:
        if state_file is not None:
            atomic_write_json(state_file, {"behaviour": setup, "search": current.to_dict()})

    checkpoint(state)
    state = run_search(model, editable, behaviour, settings, typeable_tokens(model),
                       clean_projection=setup["clean_projection"], state=state, checkpoint=checkpoint,
                       progress=progress)  # fmt: skip
    return _verified(model, editable, setup, state, cfg, settings.key, behaviour.weights, progress)


def _verified(
    model: Any, editable: EditablePrompt, setup: dict[str, Any], state: SearchState, cfg: RecoveryConfig, key: str,
    weights: tuple[float, ...] | None, progress: bool,
) -> PromptRecovery:  # fmt: skip
    tok = chat_tokenizer(model)
    ranked, texts = [], set()
    for r in sorted(state.records, key=lambda r: -(r[key] if r[key] is not None else float("-inf"))):
        text = tok.decode(r["content"])
        if text in texts or not text.strip():
            continue
        texts.add(text)
        ranked.append({"text": text, "edit": describe_ops(tok, editable.content, [tuple(o) for o in r["ops"]]),
                       **{k: r[k] for k in ("ops", "n_edits", "loglik", "shift")}})  # fmt: skip
    started = time.perf_counter()
    head = ranked[: cfg.n_verify]
    checks, baseline, embedder = verify(
        model, [t["text"] for t in tqdm(head, desc="verify", disable=not progress or not head)],
        steered=setup["steered"], clean_completion=setup["clean_completion"], target=setup["target"],
        max_new_tokens=cfg.target_tokens, min_similarity=cfg.min_similarity, min_margin=cfg.min_margin,
        embedder=cfg.embedder, weights=weights, batch_size=cfg.batch_size,
    )  # fmt: skip
    for t, c in zip(head, checks):
        t.update(completion=c.completion, similarity=c.similarity, verified_loglik=c.loglik, verified=c.verified)
    order = sorted(range(len(ranked)), key=lambda i: (not ranked[i].get("verified", False), i))
    cost = dict(state.cost, generations=len(head) + 2, verify_seconds=round(time.perf_counter() - started, 2),
                setup_seconds=setup.get("setup_seconds", 0.0))  # fmt: skip
    cost["seconds"] = round(float(cost["seconds"]), 2)
    return PromptRecovery(
        prompt=editable.text, steered=setup["steered"], clean_completion=setup["clean_completion"],
        clean_loglik=setup["clean_loglik"], baseline_similarity=baseline, triggers=[ranked[i] for i in order],
        n_evaluated=len(state.records), cost=cost, embedder=embedder,
    )  # fmt: skip
