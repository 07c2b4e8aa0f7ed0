"""winnow: streaming RL post-training for reasoning with rejection sampling (RAFT, RAFT++,
Reinforce-Rej, GRPO, REINFORCE) over Kafka, with a safe sympy verifier over gRPC.

Packages: ``winnow.verifier`` (verifier/), ``winnow.learner`` (learner/),
``winnow.generator`` (generator/), and the shared plumbing here (config, CLI, Kafka, metrics).
"""

__version__ = "0.1.0"
