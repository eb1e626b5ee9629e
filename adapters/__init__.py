"""The adapter node a department runs next to its own systems: reads, minimises, signs records."""
