"""Memory planning: per-device bytes of a training stage or a decoding pair, and its reports.

memory  the estimates and the formulas behind them
report  a training config's plan, the README table
"""
