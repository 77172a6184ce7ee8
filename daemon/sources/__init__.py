"""Sources: folders and card mounts, walked, watched and gated until files are stable."""
