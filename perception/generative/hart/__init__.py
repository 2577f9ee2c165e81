"""HART-style hybrid autoregressive object generator (issue #25): a hybrid tokenizer (multi-scale
residual VQ plus a continuous residual token), a block-causal scale-wise transformer, and a small
residual diffusion head. Reference: docs/hart.md."""
