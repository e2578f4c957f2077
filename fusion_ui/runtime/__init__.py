"""What the app needs to run long work beside the browser: loaded models and jobs.

- :mod:`fusion_ui.runtime.cache`: models kept in memory under a byte budget (LRU);
- :mod:`fusion_ui.runtime.jobs`: queued jobs, one at a time per device, with progress,
  partial results and cancel, each owned by one browser session.

Nothing here imports gradio; the UI watches jobs through the engine facade.
"""

from fusion_ui.runtime.jobs import Job, JobContext, JobRunner, JobState, JobView

__all__ = ["Job", "JobContext", "JobRunner", "JobState", "JobView"]
