"""The JSON bodies of the classification and feedback routes (error bodies: errors.py).

The class names are the served model's: app.py writes them into the OpenAPI document (label enums,
the keys of `probabilities`) each time a swap changes them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

REQUEST_ID = "^[0-9a-f]{32}$"
Probability = Annotated[float, Field(ge=0, le=1)]


class Prediction(BaseModel):
    """One image's answer."""

    label: str = Field(description="the predicted class")
    # Absent (not null) for more classes: SkipJsonSchema keeps null out of the document.
    probability: Probability | SkipJsonSchema[None] = Field(
        default=None, description="two-class models only: P(second class), the model's output"
    )
    confidence: float = Field(ge=0, le=1, description="probability of the predicted class")
    probabilities: dict[str, Probability] = Field(
        description="class -> probability: every class in the model's order, or with `top_k` "
        "the k most probable, most probable first"
    )
    model_version: str = Field(description="the registry version that answered")
    request_id: str = Field(pattern=REQUEST_ID, description="for /feedback and the logs")


class BatchPrediction(Prediction):
    index: int = Field(ge=0, description="position of the image in the request")


class Feedback(BaseModel):
    """The true label of one logged prediction."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=REQUEST_ID, description="as answered by /predict(_batch)")
    label: str = Field(description="the true class: one of the served model's classes")
    index: int = Field(default=0, ge=0, lt=2**31, description="position in a /predict_batch")


class FeedbackAnswer(BaseModel):
    """The label, stored beside the prediction."""

    request_id: str = Field(pattern=REQUEST_ID)
    index: int = Field(ge=0)
    label: str = Field(description="the true class, as given")
    predicted: str = Field(description="the class the service answered")
    correct: bool
    model_version: str
    recorded: bool = Field(description="false: this label was already recorded (a retry)")
