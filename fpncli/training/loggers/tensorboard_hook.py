"""``--logger tensorboard``: event files in ``RUN/tensorboard/`` (open them with
``tensorboard --logdir RUN``), written through ``torch.utils.tensorboard``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fpncli.training.loggers.base import ExperimentLogger, run_config
from fpncli.training.loggers.extras import require

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.training.loggers.val_images import ValidationImages

LOG_DIR = "tensorboard"
VAL_IMAGES = 4  # validation images drawn with their detections at each evaluation


class TensorBoardLogger(ExperimentLogger):
    """Every scalar of :func:`~fpncli.training.loggers.base.train_scalars` and
    :func:`~fpncli.training.loggers.base.val_scalars` at its iteration, the run's config as
    text, and at each evaluation :data:`VAL_IMAGES` validation images with the detections of
    the model at that point (``val_images/<file name>``, HWC uint8)."""

    name = "tensorboard"

    def start(self, start_iter: int, resumed: bool) -> None:
        summary_writer = require("tensorboard").SummaryWriter
        # On resume, events logged after the checkpoint's iteration (they are redone) are
        # hidden by TensorBoard: purge_step.
        self.writer = summary_writer(
            log_dir=str(self.run / LOG_DIR),
            purge_step=start_iter + 1 if resumed and start_iter > 0 else None,
            flush_secs=30,
        )
        if not resumed:
            config = json.dumps(run_config(self.run), indent=2)
            # Markdown: indented by 4 spaces, the JSON shows as code.
            self.writer.add_text("config", "\n".join("    " + line for line in config.splitlines()), 0)
        self.images: ValidationImages | None = None

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def evaluated(self, step: int) -> None:
        from fpncli.training.loggers.val_images import ValidationImages

        if self.images is None:
            if not self.cfg.val_ann or not self.cfg.val_images:
                return
            self.images = ValidationImages(self.cfg.val_ann, self.cfg.val_images, VAL_IMAGES)
        t = self.trainer
        for name, picture in self.images.render(t.model, t.device):
            self.writer.add_image(f"val_images/{name}", picture, step, dataformats="HWC")
        self.writer.flush()  # a run in progress shows its evaluations at once

    def finish(self, status: str) -> None:
        self.writer.close()
