"""What service.py composes: settings, JWT auth, upload validation, the champion model with
alias polling, adaptive batching, the prediction log and the HTTP app.

Nothing here runs at import time; `imgclf.serving.runtime.ServingRuntime` starts the pieces and
`imgclf.serving.app.build_app` is the HTTP interface (Swagger UI at /docs).
"""
