"""The file names of a run folder, spelled once.

A module with no imports, so the command line can name files without loading torch
(:mod:`melbo_tl.artifacts` re-exports them).
"""

VECTORS_FILE = "vectors.safetensors"
RUN_FILE = "run.json"
GENERATIONS_FILE = "generations.jsonl"
