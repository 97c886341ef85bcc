"""archdsl: a compiler for neural sequence-model architectures."""
