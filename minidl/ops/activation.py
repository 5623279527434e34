"""SCAFFOLD: being written."""


def relu(*args, **kwargs):
    raise NotImplementedError('relu: scaffold')


def sigmoid(*args, **kwargs):
    raise NotImplementedError('sigmoid: scaffold')
