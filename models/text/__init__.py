"""``text``: strings in. ``Input(dtype="string") -> TextVectorization`` (default standardize and split,
1000 tokens, learnt from the docstrings of the Python standard library) ``-> Embedding(mask_zero=True) ->
GlobalAveragePooling1D -> Dense(1, sigmoid)``, trained to tell the docstrings of file-system modules from
those of text-processing modules.

The graph takes the ids; ``model.onnx`` declares the text spec (metadata ``embed_runtime.text``), so the
runtime takes the strings. ``golden.npz`` holds Keras's ids for the golden strings (``input.text``) and its
outputs; ``texts.json`` holds the golden strings themselves (held-out docstring lines and one line of
several scripts).
"""

from models import InputInfo, ModelInfo

INFO = ModelInfo(
    name="text",
    inputs=(InputInfo("text", vocab=1000, length=None),),
    outputs=("probability",),
    masks=("mask",),
    text=True,
)
