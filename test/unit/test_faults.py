"""The test-only fault plan: faults fire on the planned calls only; malformed plans are refused."""

from __future__ import annotations

import pytest
import torch

from vlm_ros.testing.faults import FaultPlan, InjectedFault


@pytest.mark.parametrize("text", ["model_error", "model_error@0", "model_error@3-2", "typo@1", "model_error@x",
                                  "cuda_oom@1,,image_callback@two", ",", "", "  "])
def test_malformed_plans_are_refused(text):
    with pytest.raises(ValueError, match="fault plan"):
        FaultPlan.parse(text)


def test_image_callback_faults_fire_on_the_planned_calls_only():
    plan = FaultPlan.parse("image_callback@2-3,image_callback@5+")
    fired = []
    for n in range(1, 8):
        try:
            plan.image_callback()
        except InjectedFault:
            fired.append(n)
    assert fired == [2, 3, 5, 6, 7] and plan.describe() == "image_callback@2-3, image_callback@5+"


def test_model_faults_raise_inside_the_forward_then_the_model_works():
    plan = FaultPlan.parse("model_error@2,cuda_oom@3")
    model = torch.nn.Linear(2, 2)
    assert plan.arm_model(model)
    x = torch.ones(1, 2)
    model(x)
    with pytest.raises(InjectedFault):
        model(x)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        model(x)
    assert model(x).shape == (1, 2) and plan.fired == {"model_error": 1, "cuda_oom": 1}


def test_a_plan_without_model_faults_leaves_the_model_alone():
    model = torch.nn.Linear(2, 2)
    assert not FaultPlan.parse("image_callback@1").arm_model(model)
    assert not model._forward_pre_hooks

