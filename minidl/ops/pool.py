"""SCAFFOLD: being written."""


def max_pool2d(*args, **kwargs):
    raise NotImplementedError('max_pool2d: scaffold')
