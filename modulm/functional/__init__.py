"""From-scratch numerical primitives shared by the core and the built-in plugins.

Submodules: :mod:`.attention` (softmax, scaled dot-product attention, SiLU), :mod:`.loss`
(cross-entropy, perplexity) and :mod:`.grad` (gradient clipping by global norm).
"""
