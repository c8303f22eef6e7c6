"""The offline world: tiny and mini-real checkpoints built on this machine, the synthetic fine-grained world and its
benchmarks, the miniature LLaVA-1.5 trained on it, and the embedded default model."""
