"""``shared``: query/document similarity with one Embedding shared by two inputs.

``query`` and ``document`` ids both go through the same ``Embedding(60, 8, mask_zero=True)`` and the same
masked ``GlobalAveragePooling1D``; the output is the cosine similarity (``Dot(normalize=True)``). The
shared layer gives one mask output per input: ``token_embedding_query_mask`` and
``token_embedding_document_mask``. Dynamic sequence lengths.
"""

from models import InputInfo, ModelInfo

INFO = ModelInfo(
    name="shared",
    inputs=(InputInfo("query", vocab=60, length=None), InputInfo("document", vocab=60, length=None)),
    outputs=("similarity",),
    masks=("token_embedding_query_mask", "token_embedding_document_mask"),
)
