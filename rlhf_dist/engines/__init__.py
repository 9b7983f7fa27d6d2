"""Engines: thin wrappers over vLLM (rollout) and DeepSpeed (learner). Heavy imports happen lazily inside."""
