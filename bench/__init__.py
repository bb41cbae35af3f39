"""bench: suites of workloads x variants over `seg`, timed, measured and reported."""
