"""Tiny random-weight models of each supported family, built offline from config objects.

Used by the tests and the CPU benchmarks: timings and plumbing do not depend on weight values.
"""
