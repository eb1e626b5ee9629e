"""The hub of the Once-Only Exchange: identity, policy, routing, verification, registry, CLI."""
