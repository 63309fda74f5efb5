"""The public reference DCT code (amack315/melbo-dct-post, ``src/dct.py``), run in this process
on the same model weights, prompt, sites and positions as melbo_tl.

The reference has no licence: nothing of it is copied here. :func:`import_reference` imports its
``src/dct.py`` at run time from a checkout the user fetched (``--ref-dir``).

Set-up, kept faithful to the reference's own notebooks except where this project's sites demand:

- a plain Hugging Face copy of the model (eager attention, as its notebooks ask), the formatted
  prompt tokenized exactly as melbo_tl tokenizes it;
- X = the residual entering block s+1 (= ``blocks.s.hook_resid_post``, where melbo_tl adds θ),
  Y = its ``SlicedModel(s+1, t)`` output, read at ``blocks.t.hook_resid_pre``;
- transformers ≥ 5 hands back ``hidden_states[-1]`` after the final norm, and the reference's
  slice reads exactly that entry: ``config.tie_last_hidden_states = False`` restores the
  un-normed residual (4.46, which the reference pins, ran one extra block instead). The slice is
  checked against a full forward before anything is timed (:func:`ReferenceDCT.check_slice`).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


def import_reference(ref_dir: str | Path) -> ModuleType:
    """The reference's ``src/dct.py`` as a module (imported from ``ref_dir`` at run time)."""
    path = Path(ref_dir) / "src" / "dct.py"
    if not path.is_file():
        raise SystemExit(f"--ref-dir {ref_dir}: no src/dct.py there (a checkout of amack315/melbo-dct-post)")
    spec = importlib.util.spec_from_file_location("melbo_dct_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class QRRecorder:
    """Records what the reference's ``torch.linalg.qr`` calls get and give during its fit (its
    orthogonalization at the start of every iteration), to measure how far its factors move."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self._qr = torch.linalg.qr

    def __enter__(self) -> QRRecorder:
        def qr(a: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            q, r = self._qr(a, *args, **kwargs)
            self.inputs.append(a.detach().clone())
            self.outputs.append(q.detach().clone())
            return q, r

        torch.linalg.qr = qr
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.linalg.qr = self._qr


class ReferenceDCT:
    """The reference's calibration, fit and α ranking on melbo_tl's problem (module docstring)."""

    def __init__(self, ref: ModuleType, bridge: Any, problem: Any, *, factor_batch_size: int = 64) -> None:
        from transformers import AutoModelForCausalLM

        from melbo_tl.models.loading import model_info

        self.ref, self.problem, self.factor_batch_size = ref, problem, factor_batch_size
        dtype = next(bridge.parameters()).dtype
        hf = AutoModelForCausalLM.from_pretrained(model_info(bridge).path, dtype=dtype, attn_implementation="eager")
        hf.eval().requires_grad_(False)
        hf.config.tie_last_hidden_states = False
        self.hf = hf
        ids = problem.batch.input_ids.cpu()
        if problem.n_prompts != 1 or not bool(problem.batch.attention_mask.all()):
            raise SystemExit("the reference runs here on one unpadded prompt (it attends to pads)")
        with torch.no_grad():
            self.hidden = hf(ids, output_hidden_states=True).hidden_states
        start, t = problem.start, problem.target.canonical().layer  # θ enters block `start`; read entering t
        self.sliced = ref.SlicedModel(hf, start_layer=start, end_layer=t, layers_name="model.layers")
        self.X = self.hidden[start]
        with torch.no_grad():
            self.Y = self.sliced(self.X)
        self.delta = ref.DeltaActivations(self.sliced, target_position_indices=slice(-problem.positions.k, None))
        self.delta.device = torch.device("cpu")

    def check_slice(self) -> dict[str, float]:
        """Max |difference| of the slice's output and the full forward's residual at block t, and of
        X/Y against melbo_tl's own cached residual and unsteered target."""
        t = self.problem.target.canonical().layer
        return {
            "slice_vs_full_forward": float((self.Y - self.hidden[t]).abs().max()),
            "x_vs_melbo_tl": float((self.X - self.problem.segment.residual.cpu()).abs().max()),
            "y_vs_melbo_tl": float((self.Y - self.problem.target0.cpu()).abs().max()),
        }

    def calibrate(self, seed: int) -> tuple[float, float]:
        """(R, seconds) from the reference's calibrator (ρ(R) = 0.5, 30 random directions)."""
        torch.manual_seed(seed)
        started = time.perf_counter()
        radius = self.ref.SteeringCalibrator(target_ratio=0.5).calibrate(
            self.delta, self.X, self.Y, factor_batch_size=self.factor_batch_size
        )
        return float(radius), time.perf_counter() - started

    def fit(self, radius: float, n_factors: int, iterations: int, seed: int) -> dict[str, Any]:
        """The reference's exponential DCT (Jacobian start, d_proj = 32, β = 1) and its α² ranking.

        Returns rows-as-factors tensors: ``U0``/``V0`` its start, ``U``/``V`` its result,
        ``alpha`` per factor, ``order`` (α² descending), the per-iteration ``movement`` of its
        factors and ``flips`` (columns its QR turned to the opposite side), and ``seconds``."""
        torch.manual_seed(seed)
        model = self.ref.ExponentialDCT(num_factors=n_factors)
        started = time.perf_counter()
        with QRRecorder() as qr:
            u, v = model.fit(
                self.delta, self.X, self.Y, batch_size=1, factor_batch_size=self.factor_batch_size, init="jacobian",
                d_proj=32, input_scale=radius, max_iters=iterations, beta=1.0,
            )  # fmt: skip
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        _, indices = model.rank(self.delta, self.X, self.Y, batch_size=1, factor_batch_size=self.factor_batch_size)
        rank_seconds = time.perf_counter() - started
        alpha = model.alphas.detach().clone()
        raw = [x.T for x in qr.inputs[1:]] + [v.detach().T]  # the V each iteration produced
        at = [q.T for q in qr.outputs]  # where each iteration evaluated: QR of the previous V
        movement = [1 - (torch.nn.functional.normalize(a, dim=-1) * b).sum(-1) for a, b in zip(raw, at)]
        flips = [int(((q * x).sum(0) < 0).sum()) for q, x in zip(qr.outputs, qr.inputs)]
        return {
            "U0": model.linear_dct.U.detach().T.clone(),
            "V0": model.linear_dct.V.detach().T.clone(),
            "U": u.detach().T.clone(),
            "V": v.detach().T.clone(),
            "alpha": alpha,
            "order": indices.tolist(),
            "movement": movement,
            "flips": flips,
            "seconds": {"fit": fit_seconds, "ranking": rank_seconds},
        }
