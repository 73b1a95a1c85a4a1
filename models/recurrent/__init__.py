"""``recurrent``: a masked recurrent classifier.

``Embedding(50, 8, mask_zero=True) -> LSTM(8) -> Dense(1, sigmoid)``; the LSTM skips padded steps, so its
final state is the state after the last real id wherever the padding is. Dynamic sequence length.
"""

from models import InputInfo, ModelInfo

INFO = ModelInfo(
    name="recurrent",
    inputs=(InputInfo("token_ids", vocab=50, length=None),),
    outputs=("probability",),
    masks=("mask",),
)
