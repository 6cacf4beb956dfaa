"""`xmr serve`: the engine behind an HTTP API and a web page (FastAPI + uvicorn).

A face, like cli/: it parses requests, calls the one Engine and formats JSON; the page in
static/ is plain HTML, CSS and JavaScript served as files (no build step).
"""
