"""The engine every face calls: `Engine` (engine/engine.py) opens an index, loads the
models it needs by policy, answers searches and runs the writing operations.

Importing this package is cheap: the CLI reads `engine.running` (is a server up for this
index?) before deciding whether to load anything.
"""
