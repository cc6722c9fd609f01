"""BentoML service: wiring only; the HTTP interface is imgclf/serving/app.py.

    bentoml serve service:ImageClassifier --host 127.0.0.1 --port 3000

The running service documents itself: Swagger UI at /docs, the OpenAPI document at /openapi.json.
Settings: params.yaml `serve:` + env overrides (imgclf/serving/settings.py, auth.py).
"""

from __future__ import annotations

import functools

import bentoml

from imgclf.serving.app import ReadinessReason, ServedPaths, build_app
from imgclf.serving.auth import JWTAuthMiddleware, verifier_from_env
from imgclf.serving.logs import configure_logging
from imgclf.serving.runtime import ServingRuntime
from imgclf.serving.settings import REQUEST_TIMEOUT_SECONDS, load_settings

settings = load_settings()
app = build_app(settings, lambda: bentoml.get_current_service().runtime)


# Timeouts. BentoML's `traffic.timeout` bounds a request from its head to its answer and answers
# 504 past it (deploy/nginx/imgclf.conf's proxy_read_timeout waits 5 s longer). The body must
# arrive within serve.body_timeout_seconds, under it (settings.py checks), or the client gets a
# 408 (a client fault, not the server's 504). The pinned BentoML (1.4.40) runs uvicorn with no
# header timeout and a 5 s keep-alive (uvicorn's default; only `bentoml serve --timeout-keep-alive
# N` changes it, no service setting does); nginx's upstream keep-alive stays under it. The service
# listens on 127.0.0.1 behind nginx, which times slow clients out (408) and hands over whole
# requests only.
# Tracing: BentoML wraps every request and each of its body reads and writes in an OpenTelemetry
# span, exporter or not (~2 ms of the event loop per /predict on 2 cores): unless serve.tracing,
# every path is excluded.
@bentoml.service(
    name="imgclf",
    workers=1,
    traffic={"timeout": REQUEST_TIMEOUT_SECONDS},
    tracing={} if settings.tracing else {"excluded_urls": ".*"},
)
@bentoml.asgi_app(app, path="/")
class ImageClassifier:
    def __init__(self) -> None:  # per worker; TensorFlow loads with the model, not at import
        configure_logging(settings.log_format)
        self.runtime = ServingRuntime(settings)
        self.runtime.start()  # the model loads in the background; /readyz waits for it

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    @bentoml.on_shutdown
    def flush(self) -> None:
        self.runtime.close()


# The first added is the outer one: unknown paths and BentoML's own pages answer without a token,
# and /readyz (open) says why the worker is not ready.
ImageClassifier.add_asgi_middleware(ServedPaths, api=app)
ImageClassifier.add_asgi_middleware(ReadinessReason, api=app)
ImageClassifier.add_asgi_middleware(
    JWTAuthMiddleware,
    verifier_factory=functools.partial(verifier_from_env, settings.max_token_lifetime_seconds),
)
