"""Pure analysis: fingerprints, N+1 grouping, plan and statistics analysis (no I/O)."""
