"""Evaluation of lenses (docs/definitions.md section 5; the paper's section 4.2 and appendix I).

`evaluate` scores each lens's token sets with the input score I(T) (share of the tokens that
most activate a feature in its top corpus contexts that the lens lists) and the output score
O(T) (share of the tokens most promoted by steering the feature that the lens lists), and
optionally an LLM judge's rating; `stats` aggregates them (per layer and stratified across
layers) and `report` writes the Table-1-style tables and Figure-2-style plots. `cli` holds the
`qlens evaluate` command.
"""

from qlens_jax.evaluation.contexts import TopContexts, top_contexts
from qlens_jax.evaluation.input_score import input_scores
from qlens_jax.evaluation.judge import JudgeConfig, JudgeError, judge_scores
from qlens_jax.evaluation.output_score import Promoted, output_scores, promoted_tokens
from qlens_jax.evaluation.prefixes import NEUTRAL_PREFIXES, prefix_batch
from qlens_jax.evaluation.report import write_report
from qlens_jax.evaluation.run import SCORES, EvaluationOptions, EvaluationResult, evaluate
from qlens_jax.evaluation.sources import load_signatures, save_signatures
from qlens_jax.evaluation.stats import summarize
from qlens_jax.evaluation.steering import calibrate_alphas, rank_changes

__all__ = [
    "EvaluationOptions",
    "EvaluationResult",
    "JudgeConfig",
    "JudgeError",
    "NEUTRAL_PREFIXES",
    "Promoted",
    "SCORES",
    "TopContexts",
    "calibrate_alphas",
    "evaluate",
    "input_scores",
    "judge_scores",
    "load_signatures",
    "output_scores",
    "prefix_batch",
    "promoted_tokens",
    "rank_changes",
    "save_signatures",
    "summarize",
    "top_contexts",
    "write_report",
]
