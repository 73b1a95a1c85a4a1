"""``tagger``: a Bidirectional sequence tagger whose output keeps the time axis.

``Embedding(40, 8, mask_zero=True) -> Bidirectional(GRU(6, return_sequences=True)) -> softmax over 4 tags``
per position, shape ``(batch, sequence, 4)``. Dynamic sequence length.

The tf-keras variant wraps the output layer in ``TimeDistributed(Dense)``. The Keras 3 variant applies
``Dense`` to the 3-D tensor directly (the same function); it was written when Keras 3 ``TimeDistributed``
over a dynamic length could not be exported, and stays so that the committed artifact stays the same
(that case now exports: ``tests/export/test_export.py``).
"""

from models import InputInfo, ModelInfo

INFO = ModelInfo(
    name="tagger",
    inputs=(InputInfo("token_ids", vocab=40, length=None),),
    outputs=("tags",),
    masks=("mask",),
)
