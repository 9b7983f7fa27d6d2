"""Ray actors: thin shells around the engines (learner group; rollout, reward and reference actors come with PPO)."""
