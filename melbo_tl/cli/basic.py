"""Basic commands: ``melbo models``, ``melbo generate``, ``melbo chat``.

Results go to stdout; progress and status lines go to stderr, so ``melbo generate … > out.txt``
keeps only the completions.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Annotated, Any, Optional

import typer

from melbo_tl.cli.app import app, is_user_error, one_line
from melbo_tl.cli.common import (
    DEFAULT_DTYPE,
    DeviceOpt,
    DtypeOpt,
    MaxTokensOpt,
    ModelOpt,
    RunOpt,
    ScaleOpt,
    SeedOpt,
    VectorsOpt,
    check_steering,
    load,
    run_model,
    status,
    steering_from_options,
)

TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0, metavar="T", help="0 = greedy")]
SystemOpt = Annotated[Optional[str], typer.Option("--system", metavar="TEXT", help="system message")]


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
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    run: RunOpt = None,
    vectors: VectorsOpt = None,
    scale: ScaleOpt = None,
    max_new_tokens: MaxTokensOpt = 128,
    temperature: TemperatureOpt = 0.0,
    seed: SeedOpt = 0,
    system: SystemOpt = None,
) -> None:
    """Answer each --prompt (chat template applied), optionally steered by a vector from --run."""
    loaded_run, steering = steering_from_options(run, vectors, scale)  # checked before anything loads
    from melbo_tl.generate import generate

    bridge = load(run_model(run, model), device=device, dtype=dtype)
    check_steering(bridge, run, loaded_run, steering, vectors)
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
    device: DeviceOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
    run: RunOpt = None,
    vectors: VectorsOpt = None,
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
    loaded_run, steering = steering_from_options(run, vectors, scale)  # checked before anything loads
    from melbo_tl.generate import generate

    bridge = load(run_model(run, model), device=device, dtype=dtype)
    check_steering(bridge, run, loaded_run, steering, vectors)
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
