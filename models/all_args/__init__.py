"""``all_args``: every Embedding argument of the seed set to a non-default value.

``Embedding(100, 8, embeddings_initializer=RandomNormal(stddev=1), embeddings_regularizer=l2(1e-4),
activity_regularizer=l1(1e-5), embeddings_constraint=max_norm(1.0, axis=1), mask_zero=True, input_length=10)``
then masked ``GlobalAveragePooling1D -> Dense(1)``. The initial rows have norms near 2.8, so the
``max_norm`` constraint binds from the first step and stays active: after training every row has
norm <= 1 and most exactly 1 (``axis=1`` bounds rows; the default ``axis=0`` would bound the columns of
the table, which is not what an embedding constraint means). The length
is fixed at 10: ``input_length=10`` in tf-keras, ``keras.Input(shape=(10,))`` in Keras 3, which dropped
``input_length``. Regularizers and the constraint are training-only and must not reach the graph.
"""

from models import InputInfo, ModelInfo

INFO = ModelInfo(
    name="all_args",
    inputs=(InputInfo("token_ids", vocab=100, length=10),),
    outputs=("score",),
    masks=("mask",),
)
