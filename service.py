"""BentoML service: wiring only. The work lives in imgclf.serving.

    bentoml serve service:ImageClassifier --host 127.0.0.1 --port 3000

Endpoints: POST /predict, POST /predict_batch, POST /feedback (JWT bearer auth unless
IMGCLF_AUTH=disabled);
GET /openapi.json (JWT too): the OpenAPI 3 document of all routes (imgclf/serving/openapi.py);
open: /livez, /readyz (200 only once a model is loaded), /healthz, /metrics.
Settings: params.yaml `serve:` + env overrides (imgclf/serving/settings.py, auth.py).
"""

from __future__ import annotations

import bentoml

from imgclf.serving.api import ServingRuntime, build_app
from imgclf.serving.auth import JWTAuthMiddleware
from imgclf.serving.logs import configure_logging

routes = build_app(lambda: bentoml.get_current_service().runtime)


@bentoml.service(name="imgclf", workers=1, traffic={"timeout": 60})
@bentoml.asgi_app(routes, path="/")
class ImageClassifier:
    def __init__(self) -> None:
        self.runtime = ServingRuntime.from_env()
        configure_logging(self.runtime.settings.log_format)
        self.runtime.start()  # the model loads in the background; /readyz waits for it

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    @bentoml.on_shutdown
    def flush(self) -> None:
        self.runtime.close()


ImageClassifier.add_asgi_middleware(JWTAuthMiddleware)
