"""Goodfire's SAEs for Llama-3.x Instruct (`Goodfire/Llama-3.1-8B-Instruct-SAE-l19`,
`Goodfire/Llama-3.3-70B-Instruct-SAE-l50`): one `.pth` / `.pt` state dict of Goodfire's
`SparseAutoEncoder`, whose modules are `encoder_linear` and `decoder_linear` (see
`linear_pair` for the layout and the forward pass; sae_lens's `goodfire` loader reads it the
same way). The SAE reads the output of decoder layer L (`model.layers.L`, `resid_post`).
"""

import functools

from . import linear_pair
from .assemble import COMMON_OPTIONS

FORMAT = "goodfire"
OPTIONS = COMMON_OPTIONS
ENCODER, DECODER = "encoder_linear", "decoder_linear"
KEYS = linear_pair.keys(ENCODER, DECODER)

# load(path, opts) -> Dictionary
load = functools.partial(linear_pair.load, format=FORMAT, encoder=ENCODER, decoder=DECODER)
