"""patch_data_juicer() against the real py-data-juicer 1.6.1.

Each test runs its checks in a fresh interpreter: the patch changes Data-Juicer
for the whole process, and other test modules compare against the unpatched
reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import require

require("data_juicer")


def run_py(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_NO_INDEX="1", UV_OFFLINE="1", USE_TORCH="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=180
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_patch_reaches_executors_imported_before_it():
    run_py(
        """
        import warnings
        warnings.simplefilter("error")  # the patch must not warn here

        import data_juicer.core.executor.dag_execution_mixin as dag
        import data_juicer.core.executor.default_executor as de
        import data_juicer.core.executor.event_logging_mixin as ref_events
        import data_juicer.core.executor.ray_executor as rex
        import data_juicer.core.executor.ray_executor_partitioned as prex
        import data_juicer.utils.ckpt_utils as ref_ckpt

        RefMixin, RefManager = ref_events.EventLoggingMixin, ref_ckpt.CheckpointManager
        RefEventType, RefRay = ref_events.EventType, ref_ckpt.RayCheckpointManager

        class UserExecutor(de.ExecutorBase, RefMixin):  # a user's executor, defined before the patch
            def run(self):
                pass

        class UserManager(RefManager):
            pass

        import data_juicer_accel as accel
        from data_juicer_accel.patch import is_patched

        assert not is_patched()
        assert accel.patch_data_juicer() is True
        assert is_patched()

        # names in the modules that already imported them
        assert de.CheckpointManager is accel.CheckpointManager
        assert de.EventLoggingMixin is accel.EventLoggingMixin
        assert rex.EventLoggingMixin is accel.EventLoggingMixin
        assert prex.EventLoggingMixin is accel.EventLoggingMixin
        assert prex.EventType is accel.EventType
        assert dag.EventType is accel.EventType
        # the reference modules themselves, for later imports
        for name in ("EventLoggingMixin", "EventLogger", "EventType", "Event"):
            assert getattr(ref_events, name) is getattr(accel, name), name
        assert ref_ckpt.CheckpointManager is accel.CheckpointManager
        from data_juicer.utils.ckpt_utils import CheckpointManager
        assert CheckpointManager is accel.CheckpointManager
        # the Ray manager too, with the strategy enum it is configured with
        from data_juicer_accel.utils import ckpt_utils as accel_ckpt
        assert prex.RayCheckpointManager is accel_ckpt.RayCheckpointManager is ref_ckpt.RayCheckpointManager
        assert prex.CheckpointStrategy is accel_ckpt.CheckpointStrategy
        assert RefRay is not accel_ckpt.RayCheckpointManager

        # classes already derived from the reference classes
        for cls in (de.DefaultExecutor, rex.RayExecutor, prex.PartitionedRayExecutor, UserExecutor):
            assert accel.EventLoggingMixin in cls.__mro__, cls
            assert RefMixin not in cls.__mro__, cls
        # Ours stands where the reference's stood (last): after it come only
        # its own bases (the analysis and the summary methods) and object.
        mro = de.DefaultExecutor.__mro__
        assert mro[mro.index(accel.EventLoggingMixin) :] == accel.EventLoggingMixin.__mro__
        assert UserManager.__bases__ == (accel.CheckpointManager,)
        assert RefMixin.__subclasses__() == [] and RefManager.__subclasses__() == []
        assert RefEventType is not accel.EventType  # the reference enum itself is untouched

        # a second call changes nothing
        mro = de.DefaultExecutor.__mro__
        assert accel.patch_data_juicer() is True
        assert de.DefaultExecutor.__mro__ == mro
        assert de.DefaultExecutor.__bases__.count(accel.EventLoggingMixin) == 1
        """
    )


def test_patch_applies_to_executors_imported_after_it():
    run_py(
        """
        import warnings
        warnings.simplefilter("error")

        import data_juicer_accel as accel
        assert accel.patch_data_juicer()

        from data_juicer.core.executor.default_executor import DefaultExecutor
        import data_juicer.core.executor.default_executor as de
        assert de.CheckpointManager is accel.CheckpointManager
        assert issubclass(DefaultExecutor, accel.EventLoggingMixin)
        from data_juicer.core.executor.event_logging_mixin import EventType
        assert EventType is accel.EventType
        """
    )


def test_patched_mixin_logs_through_the_drop_in(tmp_path):
    # An executor built the way Data-Juicer builds them, after the patch: its
    # events go through the drop-in's logger, Data-Juicer's own EventType names included.
    run_py(
        f"""
        import json
        from jsonargparse import Namespace
        import data_juicer_accel as accel
        assert accel.patch_data_juicer()
        import data_juicer.core.executor.dag_execution_mixin as dag
        from data_juicer.core.executor.event_logging_mixin import EventLoggingMixin

        class Exec(EventLoggingMixin):
            executor_type = "test"
            def __init__(self, cfg):
                self.cfg = cfg
                self.work_dir = cfg.work_dir
                EventLoggingMixin.__init__(self, cfg)

        ex = Exec(Namespace(work_dir={str(tmp_path)!r}, job_id="j"))
        assert isinstance(ex.event_logger, accel.EventLogger)
        ex._log_event(dag.EventType.DAG_BUILD_START, "dag build")
        ex.log_job_complete(1.0, "out.jsonl")
        ex.event_logger.close()
        lines = [json.loads(l) for l in open(ex.event_logger.jsonl_file)]
        assert [l["event_type"] for l in lines] == ["dag_build_start", "job_complete"]
        assert ex.get_events(event_type=dag.EventType.DAG_BUILD_START)[0].message == "dag build"
        """
    )


def test_api_mismatch_warns_and_patches_nothing():
    proc = run_py(
        """
        import warnings
        import data_juicer.core.executor.default_executor as de
        import data_juicer.utils.ckpt_utils as ref_ckpt
        import data_juicer_accel as accel
        from data_juicer_accel.patch import DataJuicerAPIMismatchWarning, is_patched

        Ref = ref_ckpt.CheckpointManager
        def record(self, op_cfg, when):  # as if a future Data-Juicer changed the signature
            pass
        Ref.record = record

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert accel.patch_data_juicer() is False
        assert len(caught) == 1 and issubclass(caught[0].category, DataJuicerAPIMismatchWarning)
        message = str(caught[0].message)
        assert "CheckpointManager.record(self, op_cfg, when)" in message and "nothing patched" in message
        assert not is_patched()
        assert de.CheckpointManager is Ref and ref_ckpt.CheckpointManager is Ref
        assert accel.EventLoggingMixin not in de.DefaultExecutor.__mro__
        print("warned:", message.splitlines()[0])
        """
    )
    assert "warned:" in proc.stdout


def test_api_mismatch_in_event_types_warns():
    run_py(
        """
        import warnings
        import data_juicer.core.executor.event_logging_mixin as ref_events
        import data_juicer_accel as accel
        from data_juicer_accel.patch import DataJuicerAPIMismatchWarning

        # a reference whose EventType has a member the drop-in does not know
        from enum import Enum
        members = {m.name: m.value for m in ref_events.EventType}
        members["SOMETHING_NEW"] = "something_new"
        ref_events.EventType = Enum("EventType", members)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert accel.patch_data_juicer() is False
        assert issubclass(caught[0].category, DataJuicerAPIMismatchWarning)
        assert "something_new" in str(caught[0].message)
        assert ref_events.EventLoggingMixin is not accel.EventLoggingMixin
        """
    )


def test_patch_triggers_no_lazy_loader():
    # The rebinding pass walks module globals, where Data-Juicer keeps
    # LazyLoader("torch"), LazyLoader("ray")...: any attribute lookup on one
    # would import (and pip-install) its module.
    run_py(
        """
        import sys
        import data_juicer.core.executor  # noqa: F401  (loads the executors and their LazyLoaders)
        from data_juicer.utils.lazy_loader import LazyLoader
        import data_juicer_accel as accel

        def loaders():
            return [
                v for name, m in list(sys.modules.items()) if name.startswith("data_juicer")
                for v in list(vars(m).values()) if type(v) is LazyLoader
            ]
        before = [l for l in loaders() if l.__dict__.get("_module") is None]
        assert before, "expected unloaded LazyLoaders"
        assert accel.patch_data_juicer()
        assert all(l.__dict__.get("_module") is None for l in before)
        assert "torch" not in sys.modules
        """
    )
