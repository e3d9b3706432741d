"""medpeft: benchmark parameter-efficient fine-tuning on medical images."""

__version__ = "0.1.0"
