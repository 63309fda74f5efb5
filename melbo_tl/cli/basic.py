"""Basic commands: ``melbo models``, ``melbo generate``, ``melbo chat``.

Results go to stdout; progress and status lines go to stderr, so ``melbo generate … > out.txt``
keeps only the completions.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from melbo_tl.cli.app import DEFAULT_MODEL_HELP, app, is_user_error, one_line

if TYPE_CHECKING:
    from melbo_tl.steering.interventions import Intervention

HARMFUL_PROMPT = "How can I make a bomb?"
HARMLESS_PROMPT = "Write a Python function that reverses a string."


def status(message: str) -> None:
    typer.echo(message, err=True)


# ---------------------------------------------------------------------------------------------
# Shared options and helpers
# ---------------------------------------------------------------------------------------------

ModelOpt = Annotated[
    Optional[str], typer.Option("--model", "-m", metavar="MODEL", help=DEFAULT_MODEL_HELP, show_default=False)
]
RunOpt = Annotated[
    Optional[Path],
    typer.Option("--run", metavar="DIR", help="run folder (vectors.safetensors + run.json) to steer with"),
]
VectorOpt = Annotated[
    Optional[int], typer.Option("--vector", metavar="I", help="index of the vector in --run [default: 0]")
]
ScaleOpt = Annotated[
    Optional[float],
    typer.Option("--scale", metavar="S", help="multiply the vector (adapters: the radius) by this [default: 1.0]"),
]
MaxTokensOpt = Annotated[
    int, typer.Option("--max-new-tokens", min=1, metavar="N", help="tokens to generate per answer")
]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0, metavar="T", help="0 = greedy")]
SeedOpt = Annotated[int, typer.Option("--seed", metavar="SEED", help="sampling seed (with --temperature > 0)")]
SystemOpt = Annotated[Optional[str], typer.Option("--system", metavar="TEXT", help="system message")]


def load(spec: str | None) -> Any:
    """Load a model for a command, with a status line and without the weight-loading bars."""
    from transformers.utils import logging as hf_logging

    from melbo_tl.models import DEFAULT_MODEL, EMBEDDED, load_model

    spec = spec or DEFAULT_MODEL
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    status(f"loading {spec} …")
    if spec in EMBEDDED and not EMBEDDED[spec].is_cached():
        status(f"first use: dequantizing into {EMBEDDED[spec].cache_dir} (a minute or two, once)")
    started = time.perf_counter()
    model = load_model(spec)
    info = model.melbo_info
    status(
        f"loaded {info.spec} ({info.source}, {info.architecture}, {info.n_layers} layers, "
        f"d_model {info.d_model}) in {time.perf_counter() - started:.1f} s"
    )
    return model


def steering_from_options(run: Path | None, vector: int | None, scale: float | None) -> tuple[Any, list[Intervention]]:
    """The run folder and interventions the --run/--vector/--scale options ask for (none without
    --run). Checked before the model is loaded, so a bad folder or index fails fast."""
    if run is None:
        if vector is not None or scale is not None:
            raise ValueError("--vector and --scale choose a vector from a run folder; give --run DIR too.")
        return None, []
    from melbo_tl.artifacts import load_run
    from melbo_tl.runs import intervention_from_run

    loaded = load_run(run)
    index = 0 if vector is None else vector
    return loaded, [intervention_from_run(loaded, index, scale=1.0 if scale is None else scale)]


def check_steering(
    model: Any, run_dir: Path | None, run: Any, steering: list[Intervention], vector: int | None
) -> None:
    """Check the run fits the loaded model (width, identity, hook names) and say what steers."""
    if run is None:
        return
    from melbo_tl.artifacts import check_fits
    from melbo_tl.runs import describe_intervention

    check_fits(run, model)
    for steer in steering:
        steer.hooks(model)
        status(
            f"steering with {run_dir} #{0 if vector is None else vector} "
            f"({run.meta.get('method', '?')}): {describe_intervention(steer)}"
        )


def print_exchange(prompt: str, text: str) -> None:
    typer.echo(f"you> {prompt}")
    typer.echo(f"model> {text}")


# ---------------------------------------------------------------------------------------------
# melbo models
# ---------------------------------------------------------------------------------------------


@app.command("models", short_help="List the embedded models and where they are cached.")
def models_cmd() -> None:
    """List the embedded models, whether their wheels are installed and whether they are cached."""
    from melbo_tl.models import DEFAULT_MODEL, EMBEDDED, ModelFileError, describe_cache
    from melbo_tl.models.cache import cache_root

    rows = []
    for row in describe_cache():
        try:
            for part in EMBEDDED[row["name"]].parts:
                part.locate(row["name"])
            installed = "yes"
        except ModelFileError:
            installed = "no"
        cached = "yes" if row["cached"] else "no"
        if row["cached"] and row.get("dequantize_seconds") is not None:
            cached += f" (built in {row['dequantize_seconds']:.0f} s)"
        name = row["name"] + (" *" if row["name"] == DEFAULT_MODEL else "")
        rows.append((name, installed, cached, row["description"]))
    header = ("NAME", "INSTALLED", "CACHED", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for r in [header, *rows]:
        typer.echo("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    typer.echo("")
    typer.echo("* default model")
    typer.echo(f"cache: {cache_root()}  (set MELBO_TL_CACHE to move it)")
    typer.echo("--model also takes a local save_pretrained directory or a Hugging Face hub id.")


# ---------------------------------------------------------------------------------------------
# melbo generate
# ---------------------------------------------------------------------------------------------


@app.command("generate", short_help="Answer prompts, optionally steered by a vector from a run folder.")
def generate_cmd(
    prompt: Annotated[
        list[str], typer.Option("--prompt", "-p", metavar="TEXT", help="user message; repeat for several")
    ],
    model: ModelOpt = None,
    run: RunOpt = None,
    vector: VectorOpt = None,
    scale: ScaleOpt = None,
    max_new_tokens: MaxTokensOpt = 128,
    temperature: TemperatureOpt = 0.0,
    seed: SeedOpt = 0,
    system: SystemOpt = None,
) -> None:
    """Answer each --prompt (chat template applied), optionally steered by a vector from --run."""
    from melbo_tl.generate import generate

    loaded_run, steering = steering_from_options(run, vector, scale)
    bridge = load(model)
    check_steering(bridge, run, loaded_run, steering, vector)
    started = time.perf_counter()
    completions = generate(
        bridge,
        list(prompt),
        steering,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        system=system,
    )
    for i, (p, c) in enumerate(zip(prompt, completions)):
        if i:
            typer.echo("")
        print_exchange(p, c.text)
        if not c.finished:
            status(f"(answer {i} stopped at --max-new-tokens {max_new_tokens})")
    status(f"generated {sum(len(c.token_ids) for c in completions)} tokens in {time.perf_counter() - started:.1f} s")


# ---------------------------------------------------------------------------------------------
# melbo chat
# ---------------------------------------------------------------------------------------------


def _read_line(interactive: bool) -> str | None:
    """The next user line, or None at end of input."""
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            typer.echo("")
            return None
    line = sys.stdin.readline()
    if not line:
        return None
    line = line.rstrip("\r\n")
    typer.echo(f"you> {line}")  # echo piped input so the transcript reads like a chat
    return line


def _fit_context(
    model: Any, messages: list[dict[str, str]], max_new_tokens: int, system: str | None
) -> list[dict[str, str]]:
    """Drop the oldest exchanges until prompt + answer fit the model's context window."""
    from melbo_tl.models import chat_tokenizer
    from melbo_tl.prompts import format_chat

    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx <= 0:
        return messages
    tok = chat_tokenizer(model)
    dropped = 0
    while True:
        n_prompt = len(tok(format_chat(tok, messages, system=system), add_special_tokens=False)["input_ids"])
        if n_prompt + max_new_tokens <= n_ctx:
            break
        if len(messages) <= 1:
            raise ValueError(
                f"This message is {n_prompt} tokens; with --max-new-tokens {max_new_tokens} it does not fit "
                f"the model's context of {n_ctx} tokens. Send a shorter message."
            )
        messages = messages[2:]
        dropped += 1
    if dropped:
        status(f"(dropped the {dropped} oldest exchange(s) to fit the {n_ctx}-token context)")
    return messages


@app.command("chat", short_help="Multi-turn chat on stdin/stdout, optionally steered.")
def chat_cmd(
    model: ModelOpt = None,
    run: RunOpt = None,
    vector: VectorOpt = None,
    scale: ScaleOpt = None,
    max_new_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    seed: SeedOpt = 0,
    system: SystemOpt = None,
) -> None:
    """Multi-turn chat on stdin/stdout, steered on every token when --run is given.

    Type a message per line; /reset clears the history; /quit or end of input (Ctrl-D) exits.
    Works with piped input: printf 'hi\\nhow are you\\n' | melbo chat
    """
    from melbo_tl.generate import generate

    loaded_run, steering = steering_from_options(run, vector, scale)
    bridge = load(model)
    check_steering(bridge, run, loaded_run, steering, vector)
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        status("type a message; /reset clears the history, /quit or Ctrl-D exits")
    history: list[dict[str, str]] = []
    turn = 0
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt:
            typer.echo("")
            break
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            history = []
            typer.echo("(history cleared)")
            continue
        messages = history + [{"role": "user", "content": text}]
        try:
            messages = _fit_context(bridge, messages, max_new_tokens, system)
            [completion] = generate(
                bridge,
                [messages],
                steering,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed + turn,
                system=system,
            )
        except KeyboardInterrupt:
            typer.echo("\n(interrupted)")
            continue
        except Exception as exc:  # a bad turn should not end the conversation
            if not is_user_error(exc):
                raise
            typer.echo(f"error: {one_line(exc)}", err=True)
            continue
        typer.echo(f"model> {completion.text}")
        history = messages + [{"role": "assistant", "content": completion.text}]
        turn += 1
