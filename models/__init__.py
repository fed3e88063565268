"""The edgedl model zoo: one module per model, each a ``build()`` function and a ``RECIPE`` dict.

The recipe is data: the data set, the preprocessing it expects, the input shape, the training
hyper-parameters and the accuracy the model should reach. ``edgedl.zoo`` finds the modules here.
"""
