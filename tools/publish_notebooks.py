"""`make docs`: execute each notebook source into docs/notebooks/ with figures a GitHub visitor sees.

For every ``notebooks/N_name.ipynb`` (kept output-free in git) this writes

* ``docs/notebooks/N_name.ipynb``: the executed copy. Every plotly figure also carries a PNG
  (GitHub's notebook viewer runs no JavaScript; the figure's plotly JSON stays for Jupyter), and
  every HTML output that needs scripts (circuitsvis views) is replaced by its screenshot;
* ``docs/notebooks/N_name.md`` with ``N_name_files/*.png``: the same as a markdown page;
* ``docs/notebooks/README.md``: the index, with the first figure of each notebook;
* ``docs/notebooks/figures/NAME.png`` for each cell tagged ``publish:NAME`` (stable names for links).

Images are rendered offline by :mod:`melbo_tl.analysis.images`. A notebook whose published copy was made
from the same source is skipped (``--force`` redoes it); each copy is written when its notebook
finishes, so an interrupted run keeps the notebooks already done. A source whose code cells are
unchanged (only its text was edited) gets the new text without a rerun. ``--render-only`` re-renders
images and markdown from the executed copies without running a model.

    python tools/publish_notebooks.py [NOTEBOOK …] [--force] [--render-only] [--fast]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import the tree's analysis/ and melbo_tl/
    sys.path.insert(0, str(ROOT))

SOURCES = ROOT / "notebooks"
OUT = ROOT / "docs" / "notebooks"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
META_KEY = "melbo_tl"
CELL_TIMEOUT_S = 7200


def source_digest(book: Any) -> str:
    """A hash of what a reader writes: cell types and sources (outputs and metadata left out)."""
    h = hashlib.sha256()
    for cell in book.cells:
        h.update(cell.cell_type.encode() + b"\0" + cell.source.encode() + b"\0")
    return h.hexdigest()


def code_digest(book: Any) -> str:
    """A hash of the cell types and the code cells' sources: what decides the outputs."""
    h = hashlib.sha256()
    for cell in book.cells:
        h.update(cell.cell_type.encode() + b"\0" + (cell.source.encode() if cell.cell_type == "code" else b"") + b"\0")
    return h.hexdigest()


def refresh_text(book: Any, source: Any) -> bool:
    """Copy ``source``'s markdown into the executed ``book`` when only markdown differs (same
    cells, same code): the outputs are what running the new source would give, so no rerun."""
    if code_digest(book) != code_digest(source):
        return False
    for done, new in zip(book.cells, source.cells):
        if new.cell_type == "markdown":
            done.source = new.source
    book.metadata[META_KEY]["source_sha256"] = source_digest(source)
    return True


def machine() -> str:
    """CPU model, cores and threads: what a figure's timings and load were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    return f"{cpu}, {os.cpu_count()} cores, torch threads {threads}"


def execute(src: Path, *, fast: bool, timeout_s: int = CELL_TIMEOUT_S) -> tuple[Any, dict[str, Any]]:
    """Run ``src`` top to bottom in a fresh kernel (working dir: the notebooks folder); raise on any error."""
    from nbclient import NotebookClient

    book = nbformat.read(src, as_version=4)
    env = dict(os.environ, PLOTLY_RENDERER="plotly_mimetype")  # figure JSON only, no 4 MB of plotly.js
    env.pop("MELBO_TL_FAST", None)
    if fast:
        env["MELBO_TL_FAST"] = "1"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    NotebookClient(
        book, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}}
    ).execute(env=env)
    run = {
        "source": str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else src.name,
        "source_sha256": source_digest(book),
        "machine": machine(),
        "load_average_at_start": round(load, 2),
        "wall_s": round(time.perf_counter() - start, 1),
        "fast": fast,
    }
    book.metadata[META_KEY] = run
    return book, run


def _needs_screenshot(output: Any) -> bool:
    data = output.get("data", {})
    return PLOTLY_MIME not in data and "<script" in str(data.get("text/html", ""))


def _title(output: Any) -> str:
    """A figure's title (alt text for its image), else a generic name."""
    layout = output.get("data", {}).get(PLOTLY_MIME, {}).get("layout", {})
    title = layout.get("title", {})
    text = title.get("text", "") if isinstance(title, dict) else str(title or "")
    return re.sub(r"<[^>]+>", " ", text).strip() or ("figure" if layout else "view")


# tqdm's notice that Jupyter widgets are missing: it falls back to text bars, which is what a page shows.
_WIDGET_NOTICE = re.compile(r"^.*TqdmWarning: IProgress not found.*\n(?:\s+from \.autonotebook.*\n)?", re.M)
_CONTROL = re.compile(r"(\r|\n|\x1b\[\d*[A-Za-z])")


def terminal_text(text: str) -> str:
    """What a terminal shows after printing ``text``: progress bars redraw their line after a
    carriage return and move between lines with cursor-up codes; only their final state stays."""
    lines, row, overwrite = [""], 0, False
    for part in _CONTROL.split(text):
        if part == "\n":
            row, overwrite = row + 1, False
            if row == len(lines):
                lines.append("")
        elif part == "\r":
            overwrite = True
        elif part.startswith("\x1b["):
            count = int(part[2:-1] or 1)
            if part.endswith("A"):
                row = max(0, row - count)
            elif part.endswith("B"):
                row = min(len(lines) - 1, row + count)
            elif part.endswith("K"):
                lines[row] = ""
        elif part:
            lines[row] = part if overwrite else lines[row] + part
            overwrite = False
    return "\n".join(line.rstrip() for line in lines)


def clean_streams(book: Any) -> None:
    """Merge each cell's consecutive stream outputs, render them as a terminal would (progress bars
    keep their final state), and drop tqdm's widget notice and streams left empty."""
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        merged: list[Any] = []
        for output in cell.outputs:
            last = merged[-1] if merged else None
            if output.get("output_type") == "stream" and last is not None and last.get("name") == output.get("name"):
                last["text"] += output["text"]
            else:
                merged.append(output)
        for output in merged:
            if output.get("output_type") == "stream":
                output["text"] = _WIDGET_NOTICE.sub("", terminal_text(output["text"])).lstrip("\n")
        cell.outputs = [o for o in merged if o.get("output_type") != "stream" or o["text"].strip()]


def add_images(book: Any) -> int:
    """Give every plotly figure and every scripted HTML output an ``image/png``; returns how many.

    Screenshotted HTML loses its ``text/html`` (GitHub would show it blank or as raw text); plotly
    outputs keep their JSON, which Jupyter renders interactively and GitHub ignores.
    """
    import base64

    from melbo_tl.analysis.images import render_pngs

    targets = [
        o
        for cell in book.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") in ("display_data", "execute_result")
        and (PLOTLY_MIME in o.get("data", {}) or _needs_screenshot(o))
    ]
    items = [o["data"][PLOTLY_MIME] if PLOTLY_MIME in o["data"] else o["data"]["text/html"] for o in targets]
    for output, png in zip(targets, render_pngs(items) if items else []):
        output.setdefault("metadata", {})[META_KEY] = {"alt": _title(output)}
        if _needs_screenshot(output):
            del output["data"]["text/html"]
        output["data"]["image/png"] = base64.b64encode(png).decode()
    return len(targets)


def to_markdown(book: Any, name: str) -> tuple[str, dict[str, bytes]]:
    """The executed notebook as GitHub markdown and its image files (``{name}_files/…``)."""
    from nbconvert import MarkdownExporter

    resources = {"unique_key": "figure", "output_files_dir": f"{name}_files"}
    body, res = MarkdownExporter().from_notebook_node(copy.deepcopy(book), resources=resources)
    alts = {
        f"{name}_files/figure_{ci}_{oi}.png": o["metadata"][META_KEY]["alt"]
        for ci, cell in enumerate(book.cells)
        for oi, o in enumerate(cell.get("outputs", []))
        if META_KEY in o.get("metadata", {})
    }

    def alt(m: re.Match[str]) -> str:
        return f"![{alts.get(m.group(1), 'figure')}]({m.group(1)})"

    body = re.sub(r"!\[png\]\(([^)]+)\)", alt, body)
    body = re.sub(r"<style[^>]*>.*?</style>\s*", "", body, flags=re.S)  # GitHub would print the CSS as text
    return body, dict(res.get("outputs", {}))


def header(name: str, run: dict[str, Any]) -> str:
    src = run["source"]
    mode = " with `MELBO_TL_FAST=1` (small settings)" if run.get("fast") else ""
    return (
        f"<!-- Generated by `make docs` from {src}: edit the source, not this file. -->\n"
        f"> Executed copy of [`{src}`](../../{src}){mode}; the [notebook with outputs]({name}.ipynb) opens in Jupyter. "
        f"Executed on {run['machine']} (load average {run['load_average_at_start']} at start), "
        f"{run['wall_s']:.0f} s.\n\n"
    )


def first_heading(book: Any, fallback: str) -> tuple[str, str]:
    """The notebook's title (first markdown heading) and the first paragraph after it."""
    for cell in book.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.strip().splitlines()
            if lines and lines[0].startswith("#"):
                rest = " ".join(line for line in lines[1:] if line.strip() and not line.startswith("#"))
                return lines[0].lstrip("# ").strip(), rest.split(". ")[0].rstrip(".") + "." if rest else ""
    return fallback, ""


def tagged_images(book: Any) -> dict[str, bytes]:
    """``{NAME: png}`` for each code cell tagged ``publish:NAME``: its first image, under a name that
    stays put when cells move (the README links ``docs/notebooks/figures/NAME.png``)."""
    import base64

    found = {}
    for cell in book.cells:
        names = [t.split(":", 1)[1] for t in cell.get("metadata", {}).get("tags", []) if t.startswith("publish:")]
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for tag in names:
            if not pngs:
                raise ValueError(f"cell tagged publish:{tag} has no image output")
            found[tag] = base64.b64decode(pngs[0])
    return found


RELATIVE_LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?\))")


def relink(book: Any, sources: Path, out: Path) -> None:
    """Markdown links written relative to the source (``../docs/x.md``) made relative to ``out``,
    where the executed copy lives; links that already work from ``out`` stay as they are."""

    def fix(m: re.Match[str]) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+:", target) or (out / target).exists() or not (sources / target).exists():
            return m.group(0)
        return m.group(1) + os.path.relpath(sources / target, out) + m.group(3)

    for cell in book.cells:
        if cell.cell_type == "markdown":
            cell.source = RELATIVE_LINK.sub(fix, cell.source)


def write_outputs(book: Any, name: str, out: Path, sources: Path = SOURCES) -> Path:
    """Write the executed copy, its markdown and its images; the image folder is replaced whole."""
    from melbo_tl.artifacts import atomic_write_bytes, atomic_write_text

    relink(book, sources, out)
    for tag, png in tagged_images(book).items():
        atomic_write_bytes(out / "figures" / f"{tag}.png", png)

    out.mkdir(parents=True, exist_ok=True)
    body, images = to_markdown(book, name)
    files = out / f"{name}_files"
    shutil.rmtree(files, ignore_errors=True)
    for rel, data in images.items():
        atomic_write_bytes(out / rel, data)
    atomic_write_text(out / f"{name}.md", header(name, book.metadata[META_KEY]) + body)
    atomic_write_text(out / f"{name}.ipynb", nbformat.writes(book))
    return out / f"{name}.md"


def write_index(out: Path) -> Path:
    """``docs/notebooks/README.md``: one entry per published notebook, with its first figure."""
    from melbo_tl.artifacts import atomic_write_text

    lines = [
        "# Notebooks, executed",
        "",
        "Each tutorial in [`notebooks/`](../../notebooks) executed by `make docs`, with its outputs and figures. "
        "Open the sources in Jupyter to run them yourself.",
        "",
    ]
    for path in sorted(out.glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        title, summary = first_heading(book, path.stem)
        lines += [f"## [{title}]({path.stem}.md)", "", summary, ""]
        figures = sorted(
            (out / f"{path.stem}_files").glob("*.png"), key=lambda p: [int(x) for x in re.findall(r"\d+", p.stem)]
        )
        if figures:
            lines += [f'<a href="{path.stem}.md"><img src="{figures[0].relative_to(out)}" width="600"></a>', ""]
    atomic_write_text(out / "README.md", "\n".join(lines))
    return out / "README.md"


def publish(src: Path, out: Path = OUT, *, fast: bool = False, force: bool = False, render_only: bool = False) -> str:
    """Execute (unless ``render_only``), add images, write; returns what was done."""
    name = src.stem
    done = out / f"{name}.ipynb"
    source = nbformat.read(src, as_version=4)
    if render_only:
        if not done.is_file():
            raise FileNotFoundError(f"{done} does not exist: run without --render-only first")
        book = nbformat.read(done, as_version=4)
    else:
        if done.is_file() and not force:
            published = nbformat.read(done, as_version=4)
            old = published.metadata.get(META_KEY, {})
            if old.get("source_sha256") == source_digest(source) and old.get("fast") == fast:
                return f"{name}: up to date (--force to rerun)"
            if old.get("fast") == fast and refresh_text(published, source):
                write_outputs(published, name, out, src.resolve().parent)
                return f"{name}: text refreshed from the source (code unchanged: outputs kept)"
        book, _ = execute(src, fast=fast)
    clean_streams(book)
    n = add_images(book)
    write_outputs(book, name, out, src.resolve().parent)
    return f"{name}: {n} images, {book.metadata[META_KEY]['wall_s']:.0f} s"


def stale(out: Path = OUT, sources: Path = SOURCES) -> list[str]:
    """Sources whose published copy is missing or was made from other text."""
    found = []
    for src in sorted(sources.glob("*.ipynb")):
        done = out / src.name
        meta = nbformat.read(done, as_version=4).metadata.get(META_KEY, {}) if done.is_file() else {}
        if meta.get("source_sha256") != source_digest(nbformat.read(src, as_version=4)):
            found.append(src.name)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="sources to publish (default: notebooks/*.ipynb)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: docs/notebooks)")
    parser.add_argument("--force", action="store_true", help="rerun notebooks whose copy is up to date")
    parser.add_argument("--render-only", action="store_true", help="re-render images and markdown; run no model")
    parser.add_argument("--fast", action="store_true", help="MELBO_TL_FAST=1: small settings (a quick check)")
    parser.add_argument("--check", action="store_true", help="list stale copies and exit 1 if any; run nothing")
    args = parser.parse_args(argv)
    if args.check:
        old = stale(args.out)
        print("stale: " + ", ".join(old) if old else "all published notebooks are up to date")
        return 1 if old else 0
    paths = args.notebooks or sorted(SOURCES.glob("*.ipynb"))
    for p in paths:
        if p.suffix != ".ipynb" or not p.is_file():
            parser.error(f"{p} is not a notebook file; give paths such as notebooks/1_melbo_discovery.ipynb")
    failed = []
    for p in paths:
        try:
            done = publish(p.resolve(), args.out, fast=args.fast, force=args.force, render_only=args.render_only)
        except Exception as err:  # one failing notebook must not cost the others' work
            failed.append(p.name)
            why = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the kernel's traceback comes with colour codes
            done = f"{p.stem}: FAILED: {type(err).__name__}: {why[-2000:]}"
        print(done, flush=True)
    print(f"index: {write_index(args.out)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
