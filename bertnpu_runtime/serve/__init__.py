"""`bertnpu serve`: an OpenAI- and TEI-compatible HTTP embedding server that batches across
requests (the `serve` extra: Starlette, uvicorn, orjson, prometheus-client).

    from bertnpu_runtime.serve.app import ServeSettings, create_app   # an ASGI app
    from bertnpu_runtime.serve.server import serve                      # run it on uvicorn
"""
