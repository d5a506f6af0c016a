"""The main job behind `qlens signatures`: inputs, plan, operators, shards, assembly.

`spec` holds what a job is given (frozen values the command line builds), `inputs` loads and
checks it, `run` computes and writes the run folder."""

from qlens_jax.job.run import run_signatures
from qlens_jax.job.spec import DictionarySources, JobOptions, ModelSource, SampleSpec, SignaturesJob

__all__ = ["DictionarySources", "JobOptions", "ModelSource", "SampleSpec", "SignaturesJob", "run_signatures"]
