"""What service.py composes: settings, JWT auth, upload validation, the champion model with
alias polling and adaptive batching, the prediction log and the HTTP routes.

Nothing here runs at import time; `imgclf.serving.api.ServingRuntime` starts the pieces.
"""
