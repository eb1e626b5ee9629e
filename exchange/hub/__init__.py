"""The hub: the gate, the lookup path (policy, routing, verification) and the server around them."""
