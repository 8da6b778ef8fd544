"""The OpenAI-compatible server (`python -m ram_jax.serve`): continuous batching over slots.

engine    the decode slots and the thread that runs them (insert, advance, deliver)
requests  an OpenAI request -> engine jobs (alignment, prompt ids, settings, keys)
protocol  request bodies (pydantic), the `ram` extension, OpenAI error bodies
text      one choice's text as tokens arrive (stop strings, incremental deltas)
app       the FastAPI routes, server-sent events, disconnects
metrics   the Prometheus metrics
server    build (models, engine, resolver) and run (uvicorn, graceful shutdown)
"""
