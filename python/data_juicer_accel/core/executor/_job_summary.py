# ruff: noqa: UP006, UP035, UP045
# (typing spelled as in the reference's signatures)
"""``job_summary.json``: the summary ``EventLoggingMixin`` keeps in a job's work
directory (written at job start, updated at its end, read by
``list_available_jobs``), replaced atomically so readers never see half a file."""

import json
import os
import re
import time
from typing import Any, Dict, Optional

from loguru import logger


class JobSummaryMixin:
    """``EventLoggingMixin``'s job summary methods (the reference's, and the
    ``_create_job_summary`` 1.6.1 lacks)."""

    cfg: Any  # set by the executor
    work_dir: str  # set by the executor
    event_logger: Any  # set by EventLoggingMixin

    def _resumption_command(self, job_id: str) -> str:
        """The command that resumes this job (``dj-process`` with its job id)."""
        config_file = getattr(self.cfg, "config", None)
        if isinstance(config_file, (list, tuple)):
            config_file = config_file[0] if config_file else None
        if config_file:
            return f"dj-process --config {config_file} --job_id {job_id}"
        return f"dj-process --job_id {job_id}"

    def _create_job_summary(self, start_time: Optional[float] = None):
        """Fix: write ``job_summary.json`` at job start (1.6.1 never creates
        it, so ``_update_job_summary`` and ``list_available_jobs`` saw nothing)."""
        work_dir = getattr(self, "work_dir", None)
        if not work_dir or self.event_logger is None:
            return
        os.makedirs(work_dir, exist_ok=True)
        job_id = self.event_logger.job_id
        summary = {
            "job_id": job_id,
            "status": "running",
            "start_time": start_time or time.time(),
            "config_name": self._get_config_name(),
            "work_dir": work_dir,
            "events_file": str(self.event_logger.jsonl_file),
            "resumption_command": self._resumption_command(job_id),
        }
        _write_json_atomically(os.path.join(work_dir, "job_summary.json"), summary)

    def _update_job_summary(self, status: str, end_time: Optional[float] = None, error_message: Optional[str] = None):
        """Update job summary with completion status."""
        # work_dir already includes job_id after resolve_job_directories
        summary_file = os.path.join(self.work_dir, "job_summary.json")

        if not os.path.exists(summary_file):
            return

        with open(summary_file) as f:
            job_summary = json.load(f)

        job_summary.update(
            {
                "status": status,
                "end_time": end_time or time.time(),
                "duration": (end_time or time.time()) - job_summary.get("start_time", time.time()),
                "error_message": error_message,
            }
        )

        _write_json_atomically(summary_file, job_summary)

        # Display completion info
        if status == "completed":
            logger.info("=" * 60)
            logger.info("DataJuicer Job Completed Successfully")
            logger.info(f"Duration: {job_summary['duration']:.2f} seconds")
            logger.info("=" * 60)
        elif status == "failed":
            logger.error("=" * 60)
            logger.error("DataJuicer Job Failed")
            logger.error(f"Error: {error_message}")
            logger.error(f"Duration: {job_summary['duration']:.2f} seconds")
            logger.error("=" * 60)
            # Fix: a summary without resumption_command no longer raises KeyError.
            resumption_command = job_summary.get("resumption_command")
            if resumption_command:
                logger.error("To resume this job, use:")
                logger.error(f"  {resumption_command}")
                logger.error("=" * 60)

    def _load_job_summary(self) -> Optional[Dict[str, Any]]:
        """Load job summary if it exists."""
        # work_dir already includes job_id after resolve_job_directories
        summary_file = os.path.join(self.work_dir, "job_summary.json")

        if os.path.exists(summary_file):
            with open(summary_file) as f:
                return json.load(f)
        return None

    def _get_config_name(self) -> str:
        """Extract a meaningful name from config file or project name."""
        # Try to get config file name first
        config_file = getattr(self.cfg, "config", None)
        if isinstance(config_file, (list, tuple)):
            # Fix: Data-Juicer's parser stores the config as a list of paths.
            config_file = config_file[0] if config_file else None
        if config_file:
            # Extract filename without extension and path
            config_name = os.path.splitext(os.path.basename(str(config_file)))[0]
            # Clean up the name (remove special chars, limit length)
            config_name = re.sub(r"[^a-zA-Z0-9_-]", "_", config_name)
            config_name = config_name[:20]  # Limit length
            if config_name:
                return config_name

        # Fall back to project name
        project_name = getattr(self.cfg, "project_name", "dj")
        # Clean up project name
        project_name = re.sub(r"[^a-zA-Z0-9_-]", "_", project_name)
        project_name = project_name[:15]  # Limit length

        return project_name


def _write_json_atomically(path: str, data: Dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` so readers never see half a file."""
    tmp_path = f"{path}.tmp.{os.getpid()}"
    with open(tmp_path, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp_path, path)
