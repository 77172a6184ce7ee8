"""Pieces targets share: HTTP error mapping, OAuth, S3 uploads, streamed file bodies."""
