"""`srlm serve CKPT`: an OpenAI-compatible server with continuous batching, and a chat page at `/`.

Binds 127.0.0.1 unless told otherwise (`--host 0.0.0.0` exposes it to the network: set
`--api-key` then). Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions,
GET /health, GET /openapi.json, and the chat page at /.
"""

from __future__ import annotations

import sys
from pathlib import Path

from srlm.errors import SrlmError
from srlm.infer.options import add_model_arguments


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request but the chat page itself"
    )
    p.add_argument("--max-batch", type=int, default=16, help="rows decoded together at most (default 16)")
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="prompt + new tokens at most per request (default: the model's context)",
    )
    p.add_argument(
        "--model-name", default=None, help="the model id clients name (default: the checkpoint folder as given)"
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")


def main(args) -> int:
    try:
        import uvicorn

        from srlm.serve.app import ServeSettings, create_app
    except ImportError as e:
        raise SrlmError(f"srlm serve needs the serve extra ({e.name} is missing): pip install 'srlm[serve]'") from None
    from srlm.infer.load import load_engine

    if not 0 <= args.port <= 65535:
        raise SrlmError(f"--port {args.port}: give a port between 0 and 65535")
    if args.max_body_bytes < 1024:
        raise SrlmError(f"--max-body-bytes {args.max_body_bytes}: give at least 1024")
    engine = load_engine(
        args.path,
        dtype=args.dtype,
        quantize=args.quantize,
        threads=args.threads,
        allow_nonfinite=args.allow_nonfinite,
        revision=args.revision,
    )
    name = args.model_name or str(Path(args.path))
    settings = ServeSettings(
        model_name=name,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_model_len=args.max_model_len,
        max_body_bytes=args.max_body_bytes,
    )
    app = create_app(engine, settings)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(
            f"srlm serve: warning: --host {args.host} without --api-key: anyone who can reach this machine "
            f"can use the model",
            file=sys.stderr,
        )
    print(
        f"srlm serve: {name} on http://{args.host}:{args.port}/ (chat page), API at /v1"
        + (", API key required" if args.api_key else ""),
        flush=True,
    )
    # on a signal, replies still streaming get a few seconds to finish; then the server stops regardless
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0
