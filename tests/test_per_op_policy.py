"""Which ops a per-op checkpoint policy saves after, and how the configuration selects it."""

from __future__ import annotations

import sys

import pytest

from data_juicer_accel.utils.per_op_ckpt import CheckpointPolicy, policy_from_config

OPS = [{"a_mapper": {}}, {"b_filter": {}}, {"c_mapper": {}}, {"d_filter": {}}]


def saved_after(policy: CheckpointPolicy) -> list[int]:
    return [n for n in range(len(OPS) + 1) if policy.wants(OPS[:n])]


def test_strategies():
    assert saved_after(CheckpointPolicy("every_op")) == [1, 2, 3, 4]
    assert saved_after(CheckpointPolicy("every_n_ops", n_ops=2)) == [2, 4]
    assert saved_after(CheckpointPolicy("manual", op_names=frozenset({"b_filter", "d_filter"}))) == [2, 4]
    assert saved_after(CheckpointPolicy("disabled")) == []


def config(tmp_path, text: str | None, use_checkpoint: bool = True) -> dict:
    path = tmp_path / "cfg.yaml"
    path.write_text("np: 2\n" + (text or ""))
    section = {"enabled": True, "strategy": "every_n_ops", "n_ops": 5, "op_names": [], "background": True}
    if text:
        import yaml

        section.update(yaml.safe_load(text)["checkpoint"])
    return {"use_checkpoint": use_checkpoint, "config": [str(path)], "checkpoint": section}


def test_no_checkpoint_key_keeps_the_reference_behaviour(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dj-process"])
    # Data-Juicer's parser fills checkpoint.* with defaults: only what the user wrote counts.
    assert policy_from_config(config(tmp_path, None)) is None
    assert policy_from_config(config(tmp_path, "checkpoint:\n  strategy: every_op\n", use_checkpoint=False)) is None
    assert policy_from_config(config(tmp_path, "checkpoint:\n  strategy: disabled\n")) is None
    assert policy_from_config(config(tmp_path, "checkpoint:\n  enabled: false\n  strategy: every_op\n")) is None


def test_the_user_keys_select_the_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dj-process"])
    policy = policy_from_config(config(tmp_path, "checkpoint:\n  strategy: every_n_ops\n  n_ops: 3\n"))
    assert policy == CheckpointPolicy("every_n_ops", 3, frozenset(), True)
    policy = policy_from_config(
        config(tmp_path, "checkpoint:\n  strategy: manual\n  op_names: [x]\n  background: false\n")
    )
    assert policy == CheckpointPolicy("manual", 5, frozenset({"x"}), False)
    monkeypatch.setattr(sys, "argv", ["dj-process", "--checkpoint.strategy", "every_op"])
    cfg = config(tmp_path, None)
    cfg["checkpoint"]["strategy"] = "every_op"
    assert policy_from_config(cfg).strategy == "every_op"


def test_an_unknown_strategy_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dj-process"])
    with pytest.raises(ValueError, match="checkpoint.strategy must be one of"):
        policy_from_config(config(tmp_path, "checkpoint:\n  strategy: sometimes\n"))
