"""dronesync: the ingest box daemon for survey-drone images.

A pilot pushes a card or drops a mission folder; dronesync hashes every new image, skips
duplicates, uploads the rest to a target with retry and backoff, and starts processing once the
folder has been quiet for a while. See README.md for operating it.
"""

__version__ = "0.1.0"
