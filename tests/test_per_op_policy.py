"""Which ops a per-op checkpoint policy saves after, how the configuration selects it, and which
loop's ops checkpoint."""

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


# --------------------------------------------------------------------------
# The ops the executor's loop runs: stand-ins that checkpoint as they start.


class _Executor:
    """What ``PerOpCheckpoints`` reads of a ``DefaultExecutor``."""

    def __init__(self, ckpt_dir: str):
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager

        self.cfg: dict = {}
        self.ckpt_manager = CheckpointManager(ckpt_dir, [{"a_mapper": {}}, {"b_filter": {}}])


class _Op:
    """An op with Data-Juicer's ``run`` signature, counting the rows it got."""

    def __init__(self, name: str):
        self._name = name
        self._op_cfg = {name: {}}
        self.seen: list[int] = []

    def run(self, dataset, *, exporter=None, tracer=None):
        self.seen.append(dataset.num_rows)
        return dataset.slice(1)


def test_only_the_loop_of_the_run_s_manager_gets_stand_ins_that_checkpoint_its_rows(tmp_path):
    import pyarrow as pa

    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    from data_juicer_accel.utils.per_op_ckpt import PerOpCheckpoints

    executor = _Executor(str(tmp_path / "ckpt"))
    manager = executor.ckpt_manager
    per_op = PerOpCheckpoints(executor, CheckpointPolicy("every_op", background=False))
    ops = [_Op("a_mapper"), _Op("b_filter")]

    assert per_op.ops_for_loop(ops, checkpointer=None) is ops  # the analyzer's loop, probes
    assert per_op.ops_for_loop(ops, checkpointer=CheckpointManager(str(tmp_path / "other"), [])) is ops
    loop = per_op.ops_for_loop(ops, checkpointer=manager)
    assert [op._name for op in loop] == ["a_mapper", "b_filter"]
    loop[1].batch_size = 7  # attributes are the op's, read and written
    assert ops[1].batch_size == 7 and loop[1].batch_size == 7

    table = pa.table({"x": list(range(10))})
    dataset = loop[0].run(dataset=table, exporter=None, tracer=None)
    manager.record(loop[0]._op_cfg)
    ops[1].run(pa.table({"x": [0]}))  # someone else running the op on a sample: no checkpoint
    assert not (tmp_path / "ckpt" / "latest").exists()
    loop[1].run(dataset=dataset, exporter=None, tracer=None)
    assert ops[1].seen == [1, 9]
    assert manager.load_ckpt().column("x").to_pylist() == list(range(1, 10))  # the loop's rows
    per_op._finish(raise_errors=True)
    assert manager.on_commit is None and manager.background is False  # the run is forgotten
