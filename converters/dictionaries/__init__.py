"""Dictionary converters: SAE and transcoder files of every supported format ->
`qlens_jax.dictionaries.Dictionary` / `DictionarySet`.

One small module per format (`saelens`, `gemma_scope`, `gemma_scope_2`, `llama_scope`,
`openai`, `sparsify`, `qwen_scope`, `circuit_tracer`, `clt`, `dictionary_learning`,
`goodfire`, `deepseek_r1`, `hook_z`), shared pieces in `readers`, `assemble`, `linear_pair`
and `hub`, sae_lens registry release ids in `registry`, and the entry points in `api`.
"""

from .api import CONVERTERS, detect, load_dictionaries, load_dictionary

__all__ = ["CONVERTERS", "detect", "load_dictionaries", "load_dictionary"]
