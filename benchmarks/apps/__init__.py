"""Apps and handlers served by the benchmarks, and the harness the benchmark scripts share."""
