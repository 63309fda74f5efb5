"""The command line starts fast: help and `melbo models` never import torch or TransformerLens."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_cli_loads_no_torch():
    code = "import sys, melbo_tl.cli; print(sorted(m for m in ('torch', 'transformers', 'transformer_lens') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
