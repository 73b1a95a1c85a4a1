"""``classifier``: a mask-aware text classifier.

``Embedding(50, 8, mask_zero=True) -> GlobalAveragePooling1D -> Dense(1, sigmoid)``; the pooling averages
over real ids only, so padding at either end leaves the probability unchanged. Dynamic sequence length.
"""

from models import InputInfo, ModelInfo

INFO = ModelInfo(
    name="classifier",
    inputs=(InputInfo("token_ids", vocab=50, length=None),),
    outputs=("probability",),
    masks=("mask",),
)
