"""Near-duplicates: found at build, collapsed in results, listed for review."""
