"""The DeepSeek-R1-Distill-Llama-8B SAE (`qresearch/DeepSeek-R1-Distill-Llama-8B-SAE-l19`,
sae_lens release `deepseek-r1-distill-llama-8b-qresearch`): one `.pt` state dict whose
modules are `encoder` and `decoder` (see `linear_pair` for the layout and the forward pass,
which is sae_lens's `deepseek_r1` loader's: ReLU, nothing subtracted from the input). It reads
the output of decoder layer L (`resid_post`); the weights are stored in bfloat16.
"""

import functools

from . import linear_pair
from .assemble import COMMON_OPTIONS

FORMAT = "deepseek_r1"
OPTIONS = COMMON_OPTIONS
ENCODER, DECODER = "encoder", "decoder"
KEYS = linear_pair.keys(ENCODER, DECODER)

# load(path, opts) -> Dictionary
load = functools.partial(linear_pair.load, format=FORMAT, encoder=ENCODER, decoder=DECODER)
