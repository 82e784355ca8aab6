"""The spiking student: config, network and descriptor head."""
from .config import StudentConfig
from .student import SpikformerStudent, StudentOutput

__all__ = ["StudentConfig", "SpikformerStudent", "StudentOutput"]
