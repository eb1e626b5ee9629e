"""The tamper-evident access log: append, Merkle tree, checkpoints, proofs, export, verification."""
