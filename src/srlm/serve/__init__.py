"""The serving room: `srlm serve CKPT`, an OpenAI-compatible HTTP API with continuous batching.

A thin layer over `srlm.infer`: `scheduler.Scheduler` is one thread that owns the engine and
runs every request through one running batch (`srlm.infer.batch.DecodeBatch`); `app.create_app`
is the FastAPI app (OpenAI's endpoints, errors and streaming, the API key and limits, the chat
page `chat.html`); `protocol` holds the wire format; `cli` is the command. Needs the `serve`
extra (fastapi, uvicorn).
"""
