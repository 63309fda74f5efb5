"""Where a llama.cpp control vector acts, in melbo_tl's hook names.

llama.cpp (checked in the source vendored by llama-cpp-python 0.3.36) adds the control vector
of layer ``il`` to the output of block ``il`` (0-based), after the block's MLP residual add:
``cur = ffn_out + ffn_inp; cur = build_cvec(cur, il)`` in every model graph. Its loader
(``common_control_vector_load``) reads the file's tensor ``direction.N`` into that layer
``il = N``, rejects ``direction.0``, and the context holds vectors for ``il = 1 … n_layers − 1``
only. So, with s a block index of our model:

=================================  ===================  ======================================
melbo_tl site                      llama.cpp tensor     note
=================================  ===================  ======================================
``blocks.s.hook_resid_post``        ``direction.s``      1 ≤ s ≤ n_layers − 1
``blocks.s.hook_resid_pre``         ``direction.(s−1)``  the residual entering s = output of s − 1;
                                                         2 ≤ s ≤ n_layers − 1
``blocks.0.hook_resid_post``,       none                 llama.cpp has no vector after block 0 or
``blocks.0/1.hook_resid_pre``                            on the embeddings
=================================  ===================  ======================================

:func:`llama_cpp_layer` and :func:`hook_for_llama_cpp_layer` are the only places that know this.
"""

from __future__ import annotations

from melbo_tl.steering.sites import Site, SiteLike


def valid_llama_cpp_layers(n_layers: int) -> range:
    """The layer numbers llama.cpp applies a control vector at, for a model of ``n_layers`` blocks."""
    return range(1, n_layers)


def llama_cpp_layer(hook: SiteLike, n_layers: int) -> int:
    """The ``N`` of the file tensor ``direction.N`` that adds a vector where ``hook`` (a site or
    hook name) does.

    Raises a ValueError naming the sites that can be expressed when ``hook`` is not a residual
    stream site, or is one llama.cpp never steers (the embeddings, the output of block 0).
    """
    try:
        site = Site.parse(hook)
    except ValueError:
        site = None
    if site is None or site.kind not in ("resid_pre", "resid_post"):
        raise ValueError(
            f"Hook {hook!r} cannot be expressed as a llama.cpp control vector: llama.cpp adds vectors to the "
            f"residual stream after a block, i.e. at 'blocks.s.hook_resid_post' or 'blocks.s.hook_resid_pre'."
        )
    if not site.layer < n_layers:
        raise ValueError(
            f"Hook {hook!r} names block {site.layer}, but the model has {n_layers} blocks (0…{n_layers - 1})."
        )
    layer = site.canonical().layer - 1
    valid = valid_llama_cpp_layers(n_layers)
    if layer not in valid:
        raise ValueError(
            f"Hook {hook!r} cannot be expressed as a llama.cpp control vector: it is the "
            f"{'embedding output' if layer < 0 else 'output of block 0'}, and llama.cpp only adds vectors after "
            f"blocks {valid.start}…{valid.stop - 1} (blocks.{valid.start}.hook_resid_post … "
            f"blocks.{valid.stop - 1}.hook_resid_post, or blocks.{valid.start + 1}.hook_resid_pre … "
            f"blocks.{valid.stop - 1}.hook_resid_pre)."
        )
    return layer


def hook_for_llama_cpp_layer(layer: int, n_layers: int) -> str:
    """Our hook name for llama.cpp's ``direction.<layer>``: ``blocks.<layer>.hook_resid_post``."""
    valid = valid_llama_cpp_layers(n_layers)
    if isinstance(layer, bool) or not isinstance(layer, int) or layer not in valid:
        raise ValueError(
            f"llama.cpp layer {layer!r} is not applied to a model of {n_layers} blocks (valid {valid.start}…{valid.stop - 1})."
        )
    return Site(layer, "resid_post").hook
