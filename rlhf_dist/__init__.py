"""rlhf-dist: the InstructGPT recipe (SFT, reward model, PPO-ptx) on Ray, vLLM, DeepSpeed and Arrow.

Importing the package imports nothing heavy: each layer pulls in its own dependencies
(algo: torch only; models: transformers; engines: vllm/deepspeed, lazily).
"""

__version__ = "0.1.0"
