"""The settings of the methods that make vectors: MELBO vectors and adapters, DCT, one-shot
vectors, the refusal direction.

Each is a :class:`~melbo_tl.config.Config` dataclass whose fields carry their help and
command-line spelling (:func:`~melbo_tl.config.setting`): the ``melbo`` commands generate their
options from them. No torch here, so the command line checks settings before loading anything.
Each method's module re-exports its config (``from melbo_tl.optimize.melbo import MelboConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from melbo_tl.config import Alias, Config, parse_int_list, require, setting
from melbo_tl.optimize.layer_pair import LayerPair, LayerPairSettings
from melbo_tl.positions import Positions
from melbo_tl.steering.sites import Site, check_hook, check_layer, d_model, n_layers

MODES = ("orthogonal", "batched-orthogonal", "independent")
ORTHOGONALIZE = ("polar", "qr", "none")
RANKINGS = ("importance", "alpha", "alpha2", "behaviours")
DCT_STARTS = ("jacobian", "jacobian-svd", "random")
DCT_UPDATES = ("alternating", "simultaneous")
DCT_FINAL_U = ("response", "last-update")
# The choices each DCT variant makes for every algorithm field left as None.
DCT_VARIANTS: dict[str, dict[str, Any]] = {
    "melbo_tl": dict(
        start="jacobian", update="alternating", beta=0.5, orthogonalize="polar", orthogonal_result=True,
        final_u="response", rank_by="behaviours",
    ),
    "reference": dict(
        start="jacobian-svd", update="simultaneous", beta=1.0, orthogonalize="qr", orthogonal_result=False,
        final_u="last-update", rank_by="alpha2",
    ),
}  # fmt: skip

SOURCE_HELP = "where vectors are added: L (the residual entering block L), resid_post.L or a hook name"
TARGET_HELP = "where the change is read, after the source (a site, as for the source)"
CHAT_HELP = "format prompts with the model's chat template (--raw: use them as they are)"


def _source(help: str = SOURCE_HELP) -> Any:
    return setting(None, help, metavar="SITE", shown_default="resid_post.7, the output of block 7")


def _target() -> Any:
    return setting(None, TARGET_HELP, metavar="SITE", shown_default="n_layers − 8")


def _chat() -> Any:
    return setting(True, CHAT_HELP, flag="--chat/--raw")


def _p() -> Any:
    return setting(2.0, "exponent of the per-token norm of the change", metavar="P")


def _q() -> Any:
    return setting(1.0, "root taken of each prompt's sum", metavar="Q")


def _objective_positions() -> Any:
    return setting("all", "tokens the objective reads: all | prompt | last:K | i,j | a:b", metavar="SPEC")


@dataclass
class MelboConfig(LayerPairSettings, Config):
    """Settings of a MELBO run (``run.json["config"]``); every field's help is the command line's.
    The batched modes train ``batch_size`` vectors at a time (see :mod:`melbo_tl.optimize.melbo`)."""

    radius: float | str = setting(
        4.0, "norm R of each vector, or auto: calibrated where the response stops being linear (ρ = --rho)",
        metavar="R|auto", short="-R",
    )  # fmt: skip
    source: Site | None = _source()
    target: Site | None = _target()
    p: float = _p()
    q: float = _q()
    positions: str = _objective_positions()
    n_vectors: int = setting(8, "how many vectors", metavar="N", short="-n")
    steps: int = setting(300, "optimizer steps per vector (0: random vectors of norm R, the baseline)", metavar="K")
    lr: float = setting(1e-3, "learning rate (Riemannian AdamW)", metavar="LR")
    mode: str = setting(
        "orthogonal", "orthogonal (one at a time, the reference's) | batched-orthogonal (a batch at once, on the "
        "Stiefel manifold) | independent", metavar="MODE",
    )  # fmt: skip
    seed: int = setting(0, "random seed of the starts", metavar="SEED")
    batch_size: int = setting(8, "vectors trained at once in the batched modes", metavar="B")
    diversity_penalty: float = setting(
        0.0, "soft orthogonality: penalty on cos² of the changes caused (mode independent)", metavar="W"
    )
    calibration_target: float = setting(0.5, "with --radius auto: the calibration target ρ", metavar="X", flag="--rho")
    chat: bool = _chat()

    RESUMABLE = ("n_vectors",)

    def validate(self) -> None:
        self.validate_objective(auto_radius=True)
        require(self.n_vectors >= 1, f"n_vectors must be ≥ 1, got {self.n_vectors}.")
        require(self.diversity_penalty >= 0, f"diversity_penalty must be ≥ 0, got {self.diversity_penalty}.")
        require(self.mode in MODES, f"mode {self.mode!r} is not one of {', '.join(MODES)}.")
        require(
            not (self.diversity_penalty and self.mode != "independent"),
            "diversity_penalty is the soft alternative to orthogonality: use mode='independent'.",
        )

    @property
    def batched(self) -> bool:
        """Whether vectors train ``batch_size`` at a time."""
        return self.mode != "orthogonal"


@dataclass
class AdapterConfig(LayerPairSettings, Config):
    """Settings of a MELBO adapter run: ``radius`` R (scale of B·Aᵀ), ``rank`` r, the sites
    (``source`` the output of the block whose MLP is adapted), objective and optimizer settings as
    in :class:`MelboConfig`, and ``n_adapters`` trained ``batch_size`` at a time."""

    radius: float = setting(help="scale R of B·Aᵀ", metavar="R", short="-R")
    rank: int = setting(8, "adapter rank r", metavar="r")
    source: Site | None = _source("the output of the block whose MLP is adapted (resid_post.L)")
    target: Site | None = _target()
    p: float = _p()
    q: float = _q()
    positions: str = _objective_positions()
    n_adapters: int = setting(4, "how many adapters", metavar="N", short="-n")
    steps: int = setting(300, "optimizer steps per batch of adapters", metavar="K")
    lr: float = setting(1e-3, "learning rate", metavar="LR")
    seed: int = setting(0, "random seed of the starts", metavar="SEED")
    batch_size: int = setting(4, "adapters trained at once", metavar="B")
    chat: bool = _chat()

    RESUMABLE = ("n_adapters",)

    def validate(self) -> None:
        self.validate_objective()
        require(self.rank >= 1, f"rank must be ≥ 1, got {self.rank}.")
        require(self.n_adapters >= 1, f"n_adapters must be ≥ 1, got {self.n_adapters}.")

    @property
    def block(self) -> int:
        """The block whose MLP output weights are perturbed (the source is its output)."""
        return self.site.as_resid_post().layer

    def check_model(self, model: Any) -> None:
        super().check_model(model)
        self.for_model(model).block  # noqa: B018  (raises if the source is no block's output)
        d_mlp = int(model.cfg.d_mlp)
        require(1 <= self.rank <= d_mlp, f"rank must be in 1…{d_mlp} (d_mlp), got {self.rank}.")


@dataclass
class DCTConfig(LayerPair, Config):
    """Settings of a DCT run (see :mod:`melbo_tl.optimize.dct`); every field's help is the
    command line's. ``variant`` fills every algorithm choice left as None (``start``, ``update``,
    ``beta``, ``orthogonalize``, ``orthogonal_result``, ``final_u``, ``rank_by``) with this
    project's choices or the public reference code's (:data:`DCT_VARIANTS`). ``rank_by`` "A:B"
    ranks by logit(A's first token) − logit(B's)."""

    n_factors: int = setting(256, "number of factors F (vectors)", metavar="F", flag="--factors", short="-F")
    source: Site | None = _source()
    target: Site | None = _target()
    positions: str = setting("last:3", "target positions averaged: all | prompt | last:K | i,j | a:b", metavar="SPEC")
    radius: float | str = setting("auto", "R, or auto: calibrated so that ρ(R) = --rho", metavar="R|auto", short="-R")
    calibration_target: float = setting(
        0.5, "calibration target: non-linear / linear response", metavar="X", flag="--rho"
    )
    calibration_directions: int = setting(30, "random directions ρ(R) is averaged over", metavar="N")
    iterations: int = setting(5, "updates at most", metavar="N")
    tolerance: float = setting(
        1e-3, "stop once the median factor moved less than this (1 − cos) in one update", metavar="X"
    )
    variant: str = setting(
        "melbo_tl", "melbo_tl | reference (the public reference code's algorithm): fills every choice left unset",
        metavar="NAME",
    )  # fmt: skip
    start: str | None = setting(
        None, "jacobian | jacobian-svd (the reference's, with --d-proj outputs) | random", metavar="HOW",
        shown_default="the variant's",
    )  # fmt: skip
    d_proj: int = setting(32, "random outputs projecting the Jacobian for --start jacobian-svd", metavar="N")
    update: str | None = setting(
        None, "alternating (v pulls back the new u) | simultaneous (the previous u, the reference's)",
        metavar="HOW", shown_default="the variant's",
    )  # fmt: skip
    beta: float | None = setting(
        None, "damping in (0, 1]: each update moves this fraction of the way (1: none)", metavar="B",
        shown_default="the variant's",
    )  # fmt: skip
    orthogonalize: str | None = setting(
        None, "polar | qr | none (each keeps every vector's sign)", metavar="HOW", shown_default="the variant's"
    )
    orthogonal_result: bool | None = setting(
        None, "orthogonalize V after the last update too (the reference returns its raw last update)", cli=False
    )
    final_u: str | None = setting(
        None, "response (U of the returned V) | last-update (one step behind, the reference's)", metavar="HOW",
        shown_default="the variant's",
    )  # fmt: skip
    rank_by: str | None = setting(
        None, 'behaviours | importance | alpha | alpha2 | "A:B" (logit A − logit B at the last position)',
        metavar="KEY", shown_default="the variant's",
    )  # fmt: skip
    screen_tokens: int = setting(24, "tokens of each vector's completion judged by --rank-by behaviours", metavar="N")
    chunk_size: int = setting(64, "factors per forward pass (memory; results do not depend on it)", metavar="N")
    seed: int = setting(0, "random seed", metavar="SEED")
    chat: bool = _chat()

    def validate(self) -> None:
        require(self.variant in DCT_VARIANTS, f"variant {self.variant!r} is not one of {', '.join(DCT_VARIANTS)}.")
        for name, value in DCT_VARIANTS[self.variant].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.validate_sites()
        self.positions = str(Positions.parse(self.positions))
        require(self.n_factors >= 1, f"n_factors (F) must be ≥ 1, got {self.n_factors}.")
        if self.radius != "auto":
            try:
                self.radius = float(self.radius)
            except (TypeError, ValueError):
                raise ValueError(f"radius must be a number > 0 or 'auto', got {self.radius!r}.") from None
            require(self.radius > 0, f"radius must be > 0 or 'auto', got {self.radius}.")
        require(self.calibration_target > 0, f"calibration_target must be > 0, got {self.calibration_target}.")
        require(
            self.calibration_directions >= 1, f"calibration_directions must be ≥ 1, got {self.calibration_directions}."
        )
        require(self.iterations >= 0, f"iterations must be ≥ 0, got {self.iterations}.")
        require(self.tolerance >= 0, f"tolerance must be ≥ 0, got {self.tolerance}.")
        require(self.chunk_size >= 1, f"chunk_size must be ≥ 1, got {self.chunk_size}.")
        self._validate_choices()

    def _validate_choices(self) -> None:
        require(self.start in DCT_STARTS, f"start {self.start!r} is not one of {', '.join(DCT_STARTS)}.")
        require(self.d_proj >= 1, f"d_proj must be ≥ 1, got {self.d_proj}.")
        require(self.update in DCT_UPDATES, f"update {self.update!r} is not one of {', '.join(DCT_UPDATES)}.")
        try:
            self.beta = float(self.beta)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"beta must be a number in (0, 1] (1: no damping), got {self.beta!r}.") from None
        require(0 < self.beta <= 1, f"beta must be in (0, 1] (1: no damping), got {self.beta}.")
        require(
            self.orthogonalize in ORTHOGONALIZE,
            f"orthogonalize {self.orthogonalize!r} is not one of {', '.join(ORTHOGONALIZE)}.",
        )
        require(
            isinstance(self.orthogonal_result, bool),
            f"orthogonal_result must be True or False, got {self.orthogonal_result!r}.",
        )
        require(self.final_u in DCT_FINAL_U, f"final_u {self.final_u!r} is not one of {', '.join(DCT_FINAL_U)}.")
        require(
            is_ranking(str(self.rank_by)),
            f"rank_by {self.rank_by!r}: use {', '.join(RANKINGS)}, or 'A:B' (e.g. \"Sure:I'm sorry\").",
        )
        require(self.screen_tokens >= 1, f"screen_tokens must be ≥ 1, got {self.screen_tokens}.")

    def check_model(self, model: Any) -> None:
        super().check_model(model)
        require(
            self.orthogonalize == "none" or self.n_factors <= d_model(model),
            f"n_factors {self.n_factors} exceeds d_model {d_model(model)}: at most d_model vectors can be "
            f"orthogonal; lower n_factors or pass orthogonalize='none'.",
        )


def is_ranking(rank_by: str) -> bool:
    """A known DCT ranking name or an "A:B" pair of phrases."""
    return rank_by in RANKINGS or (rank_by.count(":") == 1 and all(rank_by.split(":")))


@dataclass
class OneShotConfig(Config):
    """Settings of a one-shot run (``run.json["config"]``; see :mod:`melbo_tl.optimize.oneshot`):
    ``promote``/``suppress`` apply to plain prompts (:class:`~melbo_tl.optimize.oneshot.Example`
    objects carry their own); ``n_vectors`` independent fits use seeds ``seed``…``seed + n − 1``.
    The old name of ``site`` is ``layer``."""

    site: Site = setting(
        help="where the vector acts: L (the residual entering block L), resid_post.L or a hook name",
        metavar="SITE", short="-l", aliases=("--layer",),
    )  # fmt: skip
    promote: tuple[str, ...] = setting((), "completion to make likely (repeatable)", metavar="TEXT")
    suppress: tuple[str, ...] = setting((), "completion to make unlikely (repeatable)", metavar="TEXT")
    coldness: float = setting(0.7, "probabilities are softmax(coldness · logits)", metavar="C")
    lr: float = setting(0.1, "learning rate (Adam)", metavar="LR")
    steps: int = setting(50, "optimizer steps", metavar="K")
    max_norm: float | None = setting(None, "keep ‖v‖ ≤ this", metavar="N")
    target_loss: float | None = setting(None, "stop once the loss (nats) reaches this", metavar="X")
    satisfice: bool = setting(False, "minimize (loss − target)² instead of stopping", flag="--satisfice/--no-satisfice")
    positions: str = setting("all", "tokens the vector acts on: all | prompt | last:K | i,j | a:b", metavar="SPEC")
    seed: int = setting(0, "random seed of the start", metavar="SEED")
    init_norm: float = setting(1.0, "norm of the random start", metavar="N")
    n_vectors: int = setting(1, "independent fits, seeds SEED…SEED+N−1", metavar="N", short="-n")
    chat: bool = _chat()

    RESUMABLE = ("n_vectors",)
    ALIASES: ClassVar[dict[str, Alias]] = {"layer": lambda layer: ("site", layer)}

    def validate(self) -> None:
        self.site = Site.parse(self.site, what="site")
        require(
            self.site.canonical().kind == "resid_pre",
            f"site {self.site.hook} is not a residual stream site; give a layer L, resid_pre.L or resid_post.L.",
        )
        self.promote, self.suppress = tuple(self.promote), tuple(self.suppress)
        self.positions = str(Positions.parse(self.positions))
        require(
            self.steps >= 0 and self.lr > 0 and self.coldness > 0,
            f"Need steps ≥ 0, lr > 0 and coldness > 0 (got steps={self.steps}, lr={self.lr}, coldness={self.coldness}).",
        )
        require(self.max_norm is None or self.max_norm > 0, f"max_norm must be > 0, got {self.max_norm}.")
        require(
            not self.satisfice or self.target_loss is not None,
            "satisfice=True minimizes (L − target_loss)²: give target_loss.",
        )
        require(self.n_vectors >= 1, f"n_vectors must be ≥ 1, got {self.n_vectors}.")
        require(self.init_norm > 0, f"init_norm must be > 0, got {self.init_norm}.")
        require(
            all(c for c in (*self.promote, *self.suppress)),
            "A completion to promote or suppress is empty; give its text.",
        )

    def check_model(self, model: Any) -> None:
        check_layer(model, self.start, what="site's block")
        check_hook(model, self.site.hook)

    @property
    def start(self) -> int:
        """The block the vector's residual enters."""
        return Site.parse(self.site).canonical().layer

    @property
    def hook(self) -> str:
        return Site.parse(self.site).hook


@dataclass
class RefusalDirectionConfig(Config):
    """Settings of a refusal-direction run; every field's help is the command line's. ``split``
    None means "train" for built-in sets and all of a file; candidate ``layers`` may be given as a
    spec ("0-18", "4,8,12") or sites (``resid_post.7`` is the layer it enters, 8)."""

    harmful: str = setting(
        "harmful", "harmful prompts: built-in set, .txt/.json/.jsonl/.csv file or hf:dataset", metavar="SET|FILE"
    )
    harmless: str = setting("harmless", "harmless prompts (as --harmful)", metavar="SET|FILE")
    split: str | None = setting(
        None, "part of the prompt sets to use: train | test | all", metavar="SPLIT",
        shown_default="train for built-in sets, all for files",
    )  # fmt: skip
    n_train: int = setting(128, "training prompts per set (difference in means)", metavar="N")
    n_val: int = setting(32, "validation prompts per set (selection)", metavar="N")
    layers: tuple[int, ...] | None = setting(
        None, "candidate layers, e.g. 0-18 or 4,8,12 (layer L: the residual entering block L)", metavar="SPEC",
        shown_default="all below --max-layer-frac",
    )  # fmt: skip
    positions: tuple[int, ...] | None = setting(
        None, "candidate positions (negative offsets from the prompt's end), e.g. -5,-1", metavar="SPEC",
        shown_default="the template tokens after the instruction",
    )  # fmt: skip
    seed: int = setting(0, "seed of the train/validation split", metavar="SEED")
    max_layer_frac: float = setting(0.8, "only layers ℓ < frac·n_layers are candidates", metavar="FRAC")
    kl_threshold: float = setting(0.1, "maximum KL on harmless prompts when ablating", metavar="X")
    induce_threshold: float = setting(
        0.0, "adding the vector must raise harmless refusal log-odds above this", metavar="X"
    )
    batch_size: int = setting(16, "prompts per forward pass", metavar="B")
    chat: bool = setting(
        True, "format prompts with the model's chat template (--raw: as they are)", flag="--chat/--raw"
    )

    RESUMABLE = ("kl_threshold", "induce_threshold", "batch_size")

    def validate(self) -> None:
        if isinstance(self.layers, str):
            self.layers = tuple(parse_int_list(self.layers, "layers"))
        if self.layers is not None:
            self.layers = tuple(_candidate_layer(l) for l in self.layers)
        if isinstance(self.positions, str):
            self.positions = tuple(parse_int_list(self.positions, "positions"))
        if self.positions is not None:
            self.positions = tuple(int(p) for p in self.positions)
        require(self.split in (None, "train", "test", "all"), f"split must be train, test or all, got {self.split!r}.")
        require(self.n_train >= 1 and self.n_val >= 1, "n_train and n_val must be at least 1.")
        require(0 < self.max_layer_frac <= 1, f"max_layer_frac must be in (0, 1], got {self.max_layer_frac}.")
        require(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}.")
        require(
            not self.positions or all(p < 0 for p in self.positions),
            f"positions {self.positions} must be negative offsets (-1 = last token).",
        )

    def for_model(self, model: Any) -> RefusalDirectionConfig:
        if self.layers is not None:
            return self
        L = n_layers(model)
        return self.replace(layers=tuple(l for l in range(L) if l < self.max_layer_frac * L))

    def check_model(self, model: Any) -> None:
        for layer in self.for_model(model).layers or ():
            check_layer(model, layer)


def _candidate_layer(value: Any) -> int:
    """A candidate layer: the block whose input residual the difference in means is taken at."""
    site = Site.parse(value, what="candidate layer").canonical()
    require(site.kind == "resid_pre", f"candidate layer {value!r} is not a residual stream site.")
    return site.layer
