"""Model rollouts on the server: the signed update with its chunks, and the canary order."""

from __future__ import annotations

import hashlib
import json

import pytest

from curbwatch.schema.protocol import CommandResultV1, CommandV1, parse_model_chunk_topic, verify
from curbwatch.server.models_rollout import (
    DeviceRolloutState,
    RolloutError,
    RolloutPlan,
    update_messages,
)

KEY = b"d" * 32
CORRELATION = "c" * 32


def result(plan: RolloutPlan, device: str, *, ok: bool, state: str) -> CommandResultV1:
    return CommandResultV1(
        correlation_id=plan.correlation_ids[device],
        ok=ok,
        result={"state": state},
        error=None if ok else f"{state}: no detections",
    )


def test_the_update_is_a_signed_command_followed_by_its_chunks_in_order() -> None:
    data = bytes(range(256)) * 10

    command, *chunks = update_messages(
        "edge-1", KEY, name="det", version="2", data=data, correlation_id=CORRELATION, chunk_bytes=1000
    )

    document = json.loads(command.payload)
    assert command.topic == "curbwatch/v1/edge-1/command" and verify(document, KEY)
    parsed = CommandV1.model_validate(document)
    assert parsed.name == "update_model"
    assert parsed.args["sha256"] == hashlib.sha256(data).hexdigest()
    assert (parsed.args["size_bytes"], len(chunks)) == (2560, 3)
    assert [parse_model_chunk_topic(chunk.topic) for chunk in chunks] == [
        (parsed.args["sha256"], index) for index in range(3)
    ]
    assert b"".join(chunk.payload for chunk in chunks) == data


def test_the_others_follow_only_a_canary_that_applied_the_model() -> None:
    plan = RolloutPlan(["a", "b", "c"], canary="b")

    assert plan.start() == ["b"]
    assert plan.states == {"a": "pending", "b": "sent", "c": "pending"}
    assert plan.record("b", result(plan, "b", ok=True, state="applied")) == ["a", "c"]
    assert plan.record("a", result(plan, "a", ok=False, state="rolled_back")) == []

    assert plan.states == {"a": "rolled_back", "b": "applied", "c": "sent"}
    assert plan.reasons["a"] == "rolled_back: no detections"
    assert not plan.halted


def test_a_canary_that_rolls_back_halts_the_rollout() -> None:
    plan = RolloutPlan(["a", "b"])
    plan.start()

    assert plan.record("a", result(plan, "a", ok=False, state="rolled_back")) == []

    assert plan.halted
    assert plan.states["b"] is DeviceRolloutState.PENDING


def test_bad_plans_and_stray_results_are_refused() -> None:
    with pytest.raises(RolloutError, match="at least one device"):
        RolloutPlan([])
    with pytest.raises(RolloutError, match="not one of the devices"):
        RolloutPlan(["a"], canary="z")
    plan = RolloutPlan(["a", "b"])
    plan.start()
    stray = CommandResultV1(correlation_id="f" * 32, ok=True)
    with pytest.raises(RolloutError, match="no update sent to a"):
        plan.record("a", stray)
