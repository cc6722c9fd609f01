"""BentoML service: wiring only; the HTTP interface is imgclf/serving/app.py.

    bentoml serve service:ImageClassifier --host 127.0.0.1 --port 3000

The running service documents itself: Swagger UI at /docs, the OpenAPI document at /openapi.json.
Settings: params.yaml `serve:` + env overrides (imgclf/serving/settings.py, auth.py).
"""

from __future__ import annotations

import bentoml

from imgclf.serving.app import ServedPaths, build_app
from imgclf.serving.auth import JWTAuthMiddleware
from imgclf.serving.logs import configure_logging
from imgclf.serving.runtime import ServingRuntime
from imgclf.serving.settings import load_settings

settings = load_settings()
app = build_app(settings, lambda: bentoml.get_current_service().runtime)


@bentoml.service(name="imgclf", workers=1, traffic={"timeout": 60})
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


# The first added is the outer one: unknown paths and BentoML's own pages answer without a token.
ImageClassifier.add_asgi_middleware(ServedPaths, api=app)
ImageClassifier.add_asgi_middleware(JWTAuthMiddleware)
