"""bertmath: a small, exact, fast PyTorch reference implementation of the BERT encoder."""

from .config import Config, DataConfig, ModelConfig, TrainConfig, load_config
from .errors import (BertmathError, CheckpointError, ConfigError, DataError, InputError, OutputError, RunDirInUseError,
                     TrainingError)
from .fill_mask import FillMask, FillMaskError
from .model import (BertForMaskedLM, BertForQuestionAnswering, BertForSentenceEmbedding, BertForSequenceClassification,
                    BertForTokenClassification, BertModel, parameter_counts, parameter_table)

__all__ = [
    "Config", "ModelConfig", "DataConfig", "TrainConfig", "load_config",
    "BertmathError", "ConfigError", "DataError", "CheckpointError", "InputError", "OutputError", "RunDirInUseError",
    "TrainingError",
    "BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
    "BertForQuestionAnswering", "BertForSentenceEmbedding", "train", "parameter_counts", "parameter_table",
    "FillMask", "FillMaskError",
]
__version__ = "0.1.0"


def train(config: Config) -> dict:
    """Pretrain BertForMaskedLM as `config` says (what `bertmath pretrain` runs); returns the summary.
    Imported on call: the trainer pulls in `datasets`, which plain model users do not need."""
    from .trainer import train as run_training
    return run_training(config)

