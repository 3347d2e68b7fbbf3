"""From-scratch numerical primitives shared by the core and the built-in plugins.

Submodules: :mod:`.attention` (softmax, scaled dot-product attention, SiLU, causal masks),
:mod:`.loss` (cross-entropy, the LM head fused with it, perplexity) and :mod:`.grad` (gradient
clipping by global norm); their functions are re-exported here and from :mod:`modulm`.
:mod:`.gated_linear` holds SwiGLU's gated input over its two products, :mod:`.workspace` the
reused CPU scratch buffers of their hand-written kernels, and :mod:`.linear` the matrix product
``x @ W.T`` of every linear layer, whose float32 CPU form runs in the faster of torch's two GEMM
libraries, as :mod:`.cpu_matmul` chooses (``system.cpu_matmul``).
"""

from modulm.functional.attention import causal_mask, scaled_dot_product_attention, silu, softmax
from modulm.functional.grad import clip_gradients
from modulm.functional.loss import cross_entropy, linear_cross_entropy, perplexity

__all__ = ["causal_mask", "clip_gradients", "cross_entropy", "linear_cross_entropy", "perplexity",
           "scaled_dot_product_attention", "silu", "softmax"]
