"""A pickle payload that creates a marker folder when unpickled, to prove loaders never unpickle."""

import os


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))
