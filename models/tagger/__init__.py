"""``tagger``: a Bidirectional sequence tagger whose output keeps the time axis.

``Embedding(40, 8, mask_zero=True) -> Bidirectional(GRU(6, return_sequences=True)) -> softmax over 4 tags``
per position, shape ``(batch, sequence, 4)``. Dynamic sequence length.

The tf-keras variant wraps the output layer in ``TimeDistributed(Dense)``. The Keras 3 variant applies
``Dense`` to the 3-D tensor directly (the same function): Keras 3 ``TimeDistributed`` with a dynamic
sequence length is mistranslated by tf2onnx (output shape ``(batch, batch, 4)``), which the exporter's
verification catches and refuses to write.
"""

from models import InputInfo, ModelInfo

INFO = ModelInfo(
    name="tagger",
    inputs=(InputInfo("token_ids", vocab=40, length=None),),
    outputs=("tags",),
    masks=("mask",),
)
