"""The math verifier: extraction, canonical forms, fast paths, sandboxed sympy, gRPC service."""
