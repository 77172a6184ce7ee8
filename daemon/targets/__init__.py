"""Upload targets: one protocol, one registry, one module or package per type.

``base`` is the protocol, ``registry`` the list of types, ``kit`` the pieces they share.
Nothing outside this package names a target type: the daemon builds targets through
``registry.build_target`` and reads what the engine needs (duplicate scope, staging, polling)
from the protocol.
"""
