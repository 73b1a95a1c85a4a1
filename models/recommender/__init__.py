"""``recommender``: a two-tower recommender.

Inputs ``user_id`` and ``item_id`` (shape ``(batch, 1)``, static length 1), each with its own
``Embedding(.., 8)``, flattened, and a ``Dot`` of the two vectors as the score. No mask: id 0 is a real
user and a real item.
"""

from models import InputInfo, ModelInfo

INFO = ModelInfo(
    name="recommender",
    inputs=(InputInfo("user_id", vocab=40, length=1), InputInfo("item_id", vocab=60, length=1)),
    outputs=("score",),
)
