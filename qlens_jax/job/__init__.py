"""The main job behind `qlens signatures`: inputs, plan, operators, shards, assembly."""

from qlens_jax.job.run import run_signatures

__all__ = ["run_signatures"]
