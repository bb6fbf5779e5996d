"""The benchmark harness: models, metrics, grids, the runner, results and reports.

Data flows one way: grid -> cells -> (distil) -> sample -> metric -> results -> report.
"""
__version__ = "0.1.0"
