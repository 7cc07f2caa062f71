"""The drop-in surface: same names, signatures, attributes and decisions as
py-data-juicer 1.6.1's CheckpointManager, checked against the real thing."""

from __future__ import annotations

import inspect
import json
import os

import pytest

import data_juicer_accel
from data_juicer_accel.utils import ckpt_utils as ours
from tests.conftest import normalise_paths, requires_reference

OPS = [{"clean_email_mapper": {}}, {"words_num_filter": {"min_num": 5}}, {"document_deduplicator": {"lowercase": True}}]


def test_reexported_from_package():
    assert data_juicer_accel.CheckpointManager is ours.CheckpointManager
    assert data_juicer_accel.CheckpointManagerBase is ours.CheckpointManagerBase
    assert data_juicer_accel.CheckpointStrategy is ours.CheckpointStrategy


@requires_reference
@pytest.mark.parametrize("name", ["CheckpointManagerBase", "CheckpointManager"])
def test_signatures_match_reference(name):
    from data_juicer.utils import ckpt_utils as ref

    ref_cls, our_cls = getattr(ref, name), getattr(ours, name)
    for method, ref_fn in inspect.getmembers(ref_cls, inspect.isfunction):
        assert hasattr(our_cls, method), f"{name}.{method} is missing"
        ref_params = list(inspect.signature(ref_fn).parameters.values())
        our_params = list(inspect.signature(getattr(our_cls, method)).parameters.values())
        # Ours may only add keyword-only parameters with defaults.
        extra = our_params[len(ref_params) :]
        assert [p.name for p in our_params[: len(ref_params)]] == [p.name for p in ref_params], method
        assert [p.default for p in our_params[: len(ref_params)]] == [p.default for p in ref_params], method
        assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in extra), method


@requires_reference
def test_strategy_enum_matches_reference():
    from data_juicer.utils.ckpt_utils import CheckpointStrategy as Ref

    assert [(m.name, m.value) for m in ours.CheckpointStrategy] == [(m.name, m.value) for m in Ref]


def test_attributes(tmp_path):
    m = ours.CheckpointManager(str(tmp_path / "ck"), OPS, num_proc=3)
    assert m.ckpt_dir == str(tmp_path / "ck")
    assert m.ckpt_ds_dir == os.path.join(m.ckpt_dir, "latest")
    assert m.ckpt_op_record == os.path.join(m.ckpt_dir, "ckpt_op.json")
    assert m.process_list == OPS and m.num_proc == 3 and m.op_record == [] and m.ckpt_available is False
    assert os.path.isdir(m.ckpt_dir)
    assert m.checkpoint_exists(m.ckpt_dir) and not m.checkpoint_exists(m.ckpt_ds_dir)


def _scenario(module, ckpt_dir, saved_ops, config_ops, table):
    """Saves after `saved_ops`, then reopens with `config_ops`."""
    m = module.CheckpointManager(ckpt_dir, saved_ops)
    for op in saved_ops:
        m.record(op)
    m.save_ckpt(table)
    again = module.CheckpointManager(ckpt_dir, config_ops)
    return again


SCENARIOS = {
    "same ops": (OPS[:2], OPS),
    "all ops done": (OPS, OPS),
    "changed arg": (OPS[:2], [OPS[0], {"words_num_filter": {"min_num": 6}}, OPS[2]]),
    "fewer ops": (OPS, OPS[:1]),
    "no ops recorded": ([], OPS),
}


@requires_reference
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_decisions_match_reference(tmp_path, scenario, log_messages):
    import datasets
    from data_juicer.core.data import NestedDataset
    from data_juicer.utils import ckpt_utils as ref

    saved_ops, config_ops = SCENARIOS[scenario]
    ds = NestedDataset(datasets.Dataset.from_dict({"text": ["a b c", "d e", "f"]}))
    results = {}
    for label, module in (("ref", ref), ("ours", ours)):
        ckpt_dir = str(tmp_path / label)
        log_messages.clear()
        m = _scenario(module, ckpt_dir, saved_ops, config_ops, ds)
        logs = [(lvl, normalise_paths(msg, ckpt_dir)) for lvl, msg in log_messages if lvl != "DEBUG"]
        loaded = m.load_ckpt() if m.ckpt_available else None
        with open(m.ckpt_op_record) as f:
            on_disk = json.load(f)
        results[label] = (
            m.ckpt_available,
            m.get_left_process_list(),
            m.op_record,
            on_disk,
            logs,
            (type(loaded).__name__, loaded.to_list()) if loaded is not None else None,
        )
    assert results["ours"] == results["ref"]


@requires_reference
def test_op_record_file_content_matches_reference(tmp_path, table):
    from data_juicer.utils import ckpt_utils as ref

    texts = {}
    for label, module in (("ref", ref), ("ours", ours)):
        import datasets

        m = module.CheckpointManager(str(tmp_path / label), OPS)
        for op in OPS:
            m.record(op)
        m.save_ckpt(datasets.Dataset.from_dict({"text": ["x"]}))
        with open(m.ckpt_op_record) as f:
            texts[label] = f.read()
    assert texts["ours"] == texts["ref"]


def test_save_returns_latest_path(tmp_path, table):
    m = ours.CheckpointManager(str(tmp_path), OPS)
    assert m.save_ckpt(table) == m.ckpt_ds_dir
    assert m.save_checkpoint(table) == m.ckpt_ds_dir


def test_save_rejects_other_kinds_with_type_error(tmp_path):
    m = ours.CheckpointManager(str(tmp_path), OPS)
    with pytest.raises(TypeError, match=r"datasets\.Dataset.*pyarrow\.Table.*__arrow_c_stream__.*got builtins\.list"):
        m.save_ckpt([{"text": "a"}])
    assert not os.path.exists(m.ckpt_ds_dir)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".latest")] == []


def test_unserialisable_op_record_fails_before_writing(tmp_path, table):
    m = ours.CheckpointManager(str(tmp_path), OPS)
    m.save_ckpt(table)
    m.record({"op": {"fn": object()}})
    with pytest.raises(TypeError):
        m.save_ckpt(table.slice(0, 5))
    assert ours.CheckpointManager(str(tmp_path), OPS).load_ckpt().equals(table)
