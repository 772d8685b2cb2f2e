"""Performance and utility benchmarks (scripts; each prints a table and writes JSON into results/)."""
