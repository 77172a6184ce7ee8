"""Local servers compatible with the targets' APIs, for tests and for trying a config by hand."""
