"""The self-check (qlens_jax/lens/self_check.py) on the families added by issue 25 (Gemma-2,
Gemma-1, Mistral, GPT-NeoX, Qwen3-MoE with dense and routed layers): it recomputes a few
features per-feature through each family's forward pass and passes for the exact operator,
and it stops the request with `SelfCheckError` for an operator off by a small error. The
exact operator is built here from per-feature transports of the basis (cheap on a tiny model;
the dense sweeps' agreement with it is tested in test_parity_reference.py)."""

import numpy as np
import pytest

import qlens_jax
from kernel_fixtures import FEATURES, setup
from qlens_jax.lens import self_check
from qlens_jax.lens.means import per_feature_means

# One side per family (each side's per-feature pass is one compilation), both for the MoE mix.
SIDES = {
    "gemma2-softcaps": ("value",),
    "gemma-geglu": ("key",),
    "mistral-sliding": ("value",),
    "neox-parallel": ("key",),
    "qwen3moe-mixed": ("value", "key"),
}


@pytest.mark.parametrize("arch", sorted(SIDES))
def test_self_check_runs_and_catches_a_wrong_operator(arch):
    _, model, dictionaries, tokens, mask = setup(arch, seed=1)
    transcoder = next(d for d in dictionaries if d.kind == "transcoder")
    plan = qlens_jax.plan_request(
        model, [transcoder], tokens, mask, lenses=[f"query_lens_{side}" for side in SIDES[arch]], features=FEATURES
    )
    request = plan.requests[0]
    basis = np.eye(model.config.d_model, dtype=np.float32)
    for side in SIDES[arch]:
        point = request.points.write if side == "value" else request.points.read
        lens = f"query_lens_{side}"
        vectors = np.asarray(request.vectors(side))
        exact = np.asarray(per_feature_means(plan, side, basis, point, quiet=True)[0]).T  # X @ op.T
        self_check.check_query_lens(plan, request, side, vectors, point, exact, lens)
        wrong = exact.copy()
        wrong[:, 0] += 1e-2 * np.abs(exact).max()
        with pytest.raises(qlens_jax.SelfCheckError, match=f"self-check failed for {lens}"):
            self_check.check_query_lens(plan, request, side, vectors, point, wrong, lens)
