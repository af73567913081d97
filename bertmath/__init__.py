"""bertmath: a small, exact, fast PyTorch reference implementation of the BERT encoder."""

from .config import Config, DataConfig, ModelConfig, TrainConfig, load_config
from .errors import BertmathError, CheckpointError, ConfigError, DataError, TrainingError
from .fill_mask import FillMask, FillMaskError
from .model import BertForMaskedLM, BertModel, parameter_counts, parameter_table

__all__ = [
    "Config", "ModelConfig", "DataConfig", "TrainConfig", "load_config",
    "BertmathError", "ConfigError", "DataError", "CheckpointError", "TrainingError",
    "BertModel", "BertForMaskedLM", "parameter_counts", "parameter_table",
    "FillMask", "FillMaskError",
]
__version__ = "0.1.0"
