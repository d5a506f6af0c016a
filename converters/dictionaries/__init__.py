"""Dictionary converters: SAE and transcoder files of every supported format ->
`qlens_jax.dictionaries.Dictionary` / `DictionarySet`.

One small module per format (`saelens`, `gemma_scope`, `gemma_scope_2`, `llama_scope`,
`openai`, `sparsify`, `qwen_scope`, `circuit_tracer`), shared pieces in `readers`, `assemble`
and `hub`, and the entry points in `api`.
"""

from .api import CONVERTERS, detect, load_dictionaries, load_dictionary

__all__ = ["CONVERTERS", "detect", "load_dictionaries", "load_dictionary"]
