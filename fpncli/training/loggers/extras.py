"""The optional packages behind the loggers, imported only when a logger is asked for."""

from __future__ import annotations

import importlib
from types import ModuleType

from fpncli.errors import FpnError

# logger -> (module to import, what it is, the pip extra that installs it)
EXTRAS = {
    "tensorboard": ("torch.utils.tensorboard", "TensorBoard", "tensorboard"),
    "mlflow": ("mlflow", "MLflow", "mlflow"),
    "wandb": ("wandb", "Weights & Biases (wandb)", "wandb"),
}


def require(logger: str) -> ModuleType:
    """The module behind ``logger``; a one-line :class:`FpnError` naming the extra when it is
    not installed."""
    module, what, extra = EXTRAS[logger]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FpnError(
            f"--logger {logger} needs {what}, which is not installed ({exc}); "
            f"install it with: pip install 'fpncli[{extra}]'"
        ) from None
