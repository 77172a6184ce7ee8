"""The upload engine and the wrappers every target shares: retry, bandwidth, stalls."""
