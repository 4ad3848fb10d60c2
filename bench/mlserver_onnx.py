"""A minimal MLServer runtime that runs an ONNX file with onnxruntime (MLServer ships no ONNX runtime).

Loaded by MLServer in its own virtualenv (.venv-bench) for bench/worker.py; it does no more per request
than decode the inputs, run the session and encode the outputs, so the comparison is server to server.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri
        self.session = ort.InferenceSession(uri, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i).astype(np.float32, copy=False) for i in payload.inputs}
        values = self.session.run(self.output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, v) for n, v in zip(self.output_names, values, strict=True)],
        )
