"""Reinforcement learning from rewards: PPO and rejection sampling, which TRL no longer ships."""
