"""Generation: the batched KV-cache engine (CPU/CUDA) used by eval, RLVR rollouts and the server."""

from posttrain.generation.engine import Completion, Engine, GenerationStats, generate
from posttrain.generation.sampling import SamplingParams

__all__ = ["Completion", "Engine", "GenerationStats", "SamplingParams", "generate"]
