"""Background saves: ``CheckpointManager(background=True)``.

``save_ckpt`` takes a zero-copy snapshot and queues it to the manager's
native writer thread (``rust/checkpoint/background.rs``), which compresses
and commits it; a watcher thread reports each commit to the manager
(``on_commit``, the op record its loads expect). At interpreter exit and in
a forked child, ``data_juicer_accel._lifecycle`` runs the steps registered
at the bottom: exit waits for every live writer's last save; a forked child
forgets the writers it inherited.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from loguru import logger

from data_juicer_accel import _lifecycle, _native
from data_juicer_accel._lifecycle import say_at_exit
from data_juicer_accel.utils import ckpt_sources
from data_juicer_accel.utils.ckpt_op_record import _OP_RECORD_FILE
from data_juicer_accel.utils.ckpt_sources import _INFO_FILE, _state_template, _StreamErrors

if TYPE_CHECKING:
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager


def queue_save(manager: CheckpointManager, source: Any, op_record: bytes) -> None:
    """Queues a save of ``source`` (with ``op_record``) to ``manager``'s
    writer thread, starting one if it has none."""
    saves = manager._background_saves
    if saves is None or not saves.usable():
        saves = manager._background_saves = _BackgroundSaves(manager)
    data, indices = source.snapshot_parts()
    errors = _StreamErrors()
    if not source.immutable and not isinstance(data, pa.Table):  # a table cannot fail; streams can
        data = errors.watch(data)
    with errors.raised_as_they_were():
        saves.submit(data, indices=indices, immutable=source.immutable, **_submit_options(manager, source, op_record))


def _submit_options(manager: CheckpointManager, source: Any, op_record: bytes) -> dict:
    return dict(
        kind=source.kind,
        files=[(_INFO_FILE, source.info_json()), (_OP_RECORD_FILE, op_record)],
        state_template=_state_template(source.state_json([])),
        level=manager.zstd_level,
        threads=max(1, int(manager.num_proc or 1)),
        chunk_bytes=ckpt_sources.CHUNK_BYTES,
        max_shard_bytes=ckpt_sources.MAX_SHARD_BYTES,
        **source.background_sizing(manager.num_proc),
        ops_done=len(manager.op_record),
        record=json.loads(op_record),
        holder=manager._lock_holder(),
        storage_options=manager._storage_options(),
    )


class _BackgroundSaves:
    """The native writer thread of one ``CheckpointManager(background=True)``.

    Tracks which submitted saves are committed, to call the manager's
    ``on_commit`` for them as soon as they are: from a watcher thread, or
    from the caller's thread when it waits (in commit order, once each; a
    lock serialises the two). Every instance alive at
    interpreter exit is closed by the exit handler, so the process exits
    only once the last requested checkpoint is durable; a save that failed
    unseen, or that a Ctrl-C abandons there, is lost: said on stderr, and
    the process exits non-zero (see ``_close_background_saves_at_exit``).
    In a forked child the writer thread does not exist: the child's copy is
    never waited on nor freed (see ``_forget_in_child``).
    """

    def __init__(self, manager: CheckpointManager):
        self.manager = manager
        self.ckpt_dir = manager.ckpt_dir
        self.writer = _native.BackgroundCheckpointWriter()
        self.pid = os.getpid()
        self.ops_done_by_seq: dict[int, int] = {}
        #: The op record of each save not yet committed; a commit makes it
        #: what the manager's loads expect.
        self.records_by_seq: dict[int, list] = {}
        self.reporting = threading.Lock()
        self.closed = False
        # A daemon thread, joined by close() (hence at exit) before
        # interpreter finalization, so it is never inside native code then.
        self.watcher = threading.Thread(target=self._watch_commits, name="dja-ckpt-commits", daemon=True)
        try:
            self.watcher.start()
        except RuntimeError as e:  # "can't start new thread": out of memory or threads
            self.closed = True
            self.writer.close()
            raise MemoryError(f"cannot start the checkpoint commit watcher thread for {self.ckpt_dir}: {e}") from e
        _LIVE_BACKGROUND_SAVES.add(self)

    def owned(self) -> bool:
        """Whether the writer thread is this process's (not a forked parent's)."""
        return self.writer is not None and self.pid == os.getpid()

    def usable(self) -> bool:
        """Whether saves may still be queued here."""
        return self.owned() and not self.closed

    def abandoned(self) -> int:
        """Saves abandoned so far (an interrupted wait abandons them)."""
        return self.writer.abandoned if self.owned() else 0

    def abandon(self, timeout: float) -> bool:
        """Gives up the saves not committed yet; whether there was one."""
        return self.owned() and self.writer.abandon(timeout)

    def submit(self, data, *, ops_done: int, record: list, **options) -> None:
        with self.reporting:  # the watcher must not see the commit before its ops_done
            try:
                seq = self.writer.submit(self.ckpt_dir, data, **options)
            except Exception as e:
                self._log_failure(e)
                raise
            self.ops_done_by_seq[seq] = ops_done
            self.records_by_seq[seq] = record
        self._report_commits()

    def wait(self) -> None:
        if not self.owned():
            return
        try:
            self.writer.wait()
        except Exception as e:
            self._log_failure(e)
            raise
        finally:
            self._report_commits()

    def close(self) -> None:
        if not self.owned():
            return
        _LIVE_BACKGROUND_SAVES.discard(self)
        self.closed = True
        try:
            self.writer.close()
        except Exception as e:
            self._log_failure(e)
            raise
        finally:
            if self.watcher is not threading.current_thread():
                self.watcher.join()
            self._report_commits()

    def _watch_commits(self) -> None:
        while not self.closed:
            if self.writer is None:
                return
            if self.writer.wait_for_commit(1.0):
                self._report_commits()

    def _report_commits(self) -> None:
        """``on_commit`` for every save committed since the last report."""
        with self.reporting:
            writer = self.writer
            committed = writer.take_committed() if writer is not None else []
            if not committed:
                return
            callback = self.manager.on_commit
            for seq in committed:
                ops_done = self.ops_done_by_seq.pop(seq, None)
                record = self.records_by_seq.pop(seq, None)
                if record is not None:
                    self.manager._expected_record = record
                if callback is not None and ops_done is not None:
                    try:
                        callback(self.manager.ckpt_ds_dir, ops_done)
                    except Exception as e:  # noqa: BLE001 - a callback must not hide a commit from the others
                        logger.error(f"on_commit callback for {self.manager.ckpt_ds_dir} failed: {e}")
            # Saves are committed in order: one older than a commit was superseded.
            self.ops_done_by_seq = {seq: n for seq, n in self.ops_done_by_seq.items() if seq > committed[-1]}
            self.records_by_seq = {seq: r for seq, r in self.records_by_seq.items() if seq > committed[-1]}

    def _log_failure(self, error: Exception) -> None:
        logger.error(f"Background checkpoint save into {self.ckpt_dir} failed: {error}")


_LIVE_BACKGROUND_SAVES = _lifecycle.live_objects(_lifecycle.BACKGROUND_SAVES)
#: Writers inherited by a forked child: their thread did not survive the
#: fork, so they are kept alive (never joined, never freed) in the child.
_ORPHANED_IN_CHILD: list = []


#: Seconds exit gives an abandoned save to stop and remove its staging directory.
_ABANDON_WAIT_SECONDS = 5.0


def _close_background_saves_at_exit() -> None:
    """Waits for the last save of every background writer. One that failed
    without the program seeing it, or that a Ctrl-C abandons here, is lost:
    that is said on stderr and the process exits non-zero, as after an
    uncaught exception (by SIGINT after a Ctrl-C)."""
    remaining = list(_LIVE_BACKGROUND_SAVES)
    while remaining:
        saves = remaining.pop(0)
        # A writer a daemon thread started while this step ran is closed too.
        remaining += [later for later in _LIVE_BACKGROUND_SAVES if later not in remaining and later is not saves]
        abandoned_before = saves.abandoned()
        try:
            saves.close()
        except KeyboardInterrupt:
            interrupted = [saves] if saves.abandoned() > abandoned_before else []
            _abandon_at_exit(interrupted + [other for other in remaining if other.abandon(_ABANDON_WAIT_SECONDS)])
            return
        except Exception as e:  # noqa: BLE001 - logged by close(); close every other one too
            say_at_exit(
                f"the checkpoint {saves.manager.ckpt_ds_dir} was lost at interpreter exit: its background "
                f"save failed: {e}. The previous checkpoint is kept."
            )
            _native.fail_exit("failed")


def _abandon_at_exit(lost: list) -> None:
    """After a Ctrl-C at exit: names the saves it abandoned; the
    process ends by SIGINT, as on an unhandled KeyboardInterrupt."""
    for saves in lost:
        say_at_exit(
            f"Ctrl-C at interpreter exit: abandoned the background save of the checkpoint "
            f"{saves.manager.ckpt_ds_dir}; it is lost, the previous checkpoint is kept."
        )
    _native.fail_exit("interrupted")


def _forget_in_child() -> None:
    """In a forked child: the writer threads did not survive the fork."""
    for saves in list(_LIVE_BACKGROUND_SAVES):
        _ORPHANED_IN_CHILD.append(saves.writer)
        saves.writer = None
    _LIVE_BACKGROUND_SAVES.clear()


_lifecycle.register(
    _lifecycle.BACKGROUND_SAVES, at_exit=_close_background_saves_at_exit, in_forked_child=_forget_in_child
)
