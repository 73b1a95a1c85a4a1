"""``all_args``: every Embedding argument of the seed set to a non-default value.

``Embedding(100, 8, embeddings_initializer=RandomNormal(stddev=1), embeddings_regularizer=l2(1e-4),
activity_regularizer=l1(1e-5), embeddings_constraint=max_norm(1.0), mask_zero=True, input_length=10)``
then masked ``GlobalAveragePooling1D -> Dense(1)``. The initial rows have norms near 2.8, so training
leaves the ``max_norm`` constraint active (every trained row has norm <= 1, most exactly 1). The length
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
