"""scripts/bench-link: the HTTP targets through a limited link (namespace, tc, a delay)."""
