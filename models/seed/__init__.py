"""``seed``: the seed's own example, ``Sequential([Embedding(1000, 64, input_length=10)])``.

Compiled with ``rmsprop``/``mse``; ``predict`` on ``randint(1000, size=(32, 10))`` gives ``(32, 10, 64)``.
The committed artifact comes from tf-keras, the seed's flavour, where ``input_length=10`` fixes the
sequence length. Keras 3 dropped ``input_length``; its twin fixes the length with ``keras.Input(shape=(10,))``.
"""

from models import InputInfo, ModelInfo

INFO = ModelInfo(
    name="seed",
    inputs=(InputInfo("input_ids", vocab=1000, length=10),),
    outputs=("embedding",),
    committed_flavour="tf_keras",
)
